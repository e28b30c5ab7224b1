//! Facts about this machine that the writers and the training side need: its host name (in
//! lock files and temporary names), whether a process still runs (stale temporaries), and how
//! much memory is left (refusing work that cannot fit before allocating it).

use std::fs;
use std::path::Path;

/// This machine's host name, as used in lock files and temporary names (dots replaced, so it
/// can sit between dots in a file name).
pub fn host_name() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Whether process `pid` of this host is running. Where that cannot be told (no `/proc`),
/// every process counts as running, so nothing of a live process is ever removed.
pub fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// Bytes of memory the system can still give (Linux `MemAvailable`); None where unknown.
pub fn available_memory() -> Option<u64> {
    let s = fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }
}
