//! How much RAM the machine has: `MemTotal` from `/proc/meminfo`, or
//! `sysinfo(2)` where that file cannot be read.

/// Bytes of RAM the kernel manages (`MemTotal`), or `None` if neither
/// `/proc/meminfo` nor `sysinfo(2)` says.
pub fn mem_total() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_mem_total(&s))
        .or_else(sysinfo_total)
}

/// `MemTotal:  N kB` → N × 1024.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

fn sysinfo_total() -> Option<u64> {
    // SAFETY: `sysinfo` is plain old data; all-zero bytes are a valid value.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `si` is a valid, writable `struct sysinfo` for the call.
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return None;
    }
    (si.totalram as u64).checked_mul(si.mem_unit.max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mem_total() {
        let s = "MemTotal:        8056308 kB\nMemFree:          123 kB\n";
        assert_eq!(parse_mem_total(s), Some(8056308 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: x kB\n"), None);
        assert!(mem_total().is_some_and(|b| b > 0));
    }
}
