// SPDX-License-Identifier: GPL-3.0-or-later
//! Which process claimed a request, so that another can tell whether it is still at
//! work: the root worker and the admin commands both carry requests out, and a request
//! left `running` by a process that died must be finished by someone, while one a live
//! process is carrying out must be left to it.
//!
//! A claimant is `PID START BOOT-ID`: the process id, its start time (in clock ticks
//! since boot, from `/proc/PID/stat`: a reused pid has another) and the kernel's random
//! boot id (after a reboot every old claimant is gone, whatever its pid).

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-boot".to_owned())
}

/// When process `pid` started (field 22 of `/proc/PID/stat`), if it exists.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields 3 on follow
    // the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// This process as a claimant.
pub fn this_process() -> String {
    let pid = std::process::id();
    of_process(pid).unwrap_or_else(|| format!("{pid} 0 {}", boot_id()))
}

/// Process `pid` as a claimant, if it exists.
pub fn of_process(pid: u32) -> Option<String> {
    Some(format!("{pid} {} {}", start_time(pid)?, boot_id()))
}

/// Whether the claimant `who` is gone: it claimed before this boot, its process no
/// longer exists, or its pid now belongs to a process started later. A request with no
/// claimant recorded counts as gone. This process itself is not gone.
pub fn gone(who: Option<&str>) -> bool {
    let Some(who) = who else {
        return true;
    };
    if who == this_process() {
        return false;
    }
    let mut parts = who.split(' ');
    let (Some(pid), Some(start), Some(boot), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return true;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return true;
    };
    if boot != boot_id() || pid <= 0 {
        return true;
    }
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => true,
        _ => start_time(pid as u32).is_some_and(|now| now != start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_claimant_is_not_gone_a_dead_reused_or_old_one_is() {
        let me = this_process();
        assert_eq!(me.split(' ').count(), 3, "{me}");
        assert!(!gone(Some(&me)));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let boot = boot_id();
        let started = start_time(child.id()).expect("a start time");
        let live = format!("{} {started} {boot}", child.id());
        assert!(!gone(Some(&live)), "a running process");
        let reused = format!("{} 1 {boot}", child.id());
        assert!(gone(Some(&reused)), "its pid, another start time");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(gone(Some(&live)), "its process is gone");
        let pid = std::process::id();
        assert!(gone(Some(&format!(
            "{pid} {} another-boot",
            start_time(pid).unwrap()
        ))));
        assert!(gone(None));
        assert!(gone(Some("garbage")));
        assert!(gone(Some(&format!("{pid} {boot}"))), "an old form");
        assert!(gone(Some(&format!("0 1 {boot}"))));
    }
}
