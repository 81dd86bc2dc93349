// SPDX-License-Identifier: GPL-3.0-or-later
//! Memory figures from /proc, shared by the benchmarks.

/// A `kB` field (`VmRSS:`, `VmHWM:`) of /proc/`pid`/status, `pid` being a number or
/// `self`; 0 when it cannot be read.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
