// SPDX-License-Identifier: GPL-3.0-or-later
//! Which process claimed a request, so that another can tell whether it is still at
//! work: the root worker and the admin commands both carry requests out, and a request
//! left `running` by a process that died must be finished by someone, while one a live
//! process is carrying out must be left to it.
//!
//! A claimant is `PID BOOT-ID` (the kernel's random boot id): after a reboot every old
//! claimant is gone, whatever its pid.

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-boot".to_owned())
}

/// This process as a claimant.
pub fn this_process() -> String {
    format!("{} {}", std::process::id(), boot_id())
}

/// Whether the claimant `who` is gone: it claimed before this boot, or its process no
/// longer exists. A request claimed before claimants were recorded (`None`) counts as
/// gone. This process itself is not gone.
pub fn gone(who: Option<&str>) -> bool {
    let Some((pid, boot)) = who.and_then(|w| w.split_once(' ')) else {
        return true;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return true;
    };
    if boot != boot_id() || pid <= 0 {
        return true;
    }
    if pid as u32 == std::process::id() {
        return false;
    }
    matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_claimant_is_not_gone_a_dead_or_old_one_is() {
        let me = this_process();
        assert!(!gone(Some(&me)));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let boot = boot_id();
        let live = format!("{} {boot}", child.id());
        assert!(!gone(Some(&live)), "a running process");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(gone(Some(&live)), "its process is gone");
        assert!(gone(Some(&format!("{} another-boot", std::process::id()))));
        assert!(gone(None));
        assert!(gone(Some("garbage")));
        assert!(gone(Some(&format!("0 {boot}"))));
    }
}
