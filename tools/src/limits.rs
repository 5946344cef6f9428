//! What the command line checks its size flags against, and how it words a
//! refusal: the flag, the value in the units it was given in, the limit in
//! human units, and a value that would pass.
//!
//! Limits: managed memory must fit the system-memory limit svmem enforces
//! ([`svmem::default_memory_limit`]); memory the run commits (emulated device
//! memory, copy buffers) must fit what the machine has available now
//! (`MemAvailable`); and a flag may have a floor below which the command
//! cannot do or measure anything.

use svmem::PAGE_SIZE;

/// A refused flag value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {value}: {problem}; use {flag} {fix}")]
pub struct FlagError {
    /// The flag, with its dashes (`--size`).
    pub flag: &'static str,
    /// The value as a size flag would take it (`1T`, `3`).
    pub value: String,
    /// What is wrong, with the limit in human units.
    pub problem: String,
    /// A value that passes, with a qualifier (`16G or less`).
    pub fix: String,
}

/// The machine's limits, read once per command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// svmem's system-memory limit for managed memory.
    pub memory_limit: u64,
    /// Memory available to new allocations now (`MemAvailable`), or the
    /// memory limit where `/proc/meminfo` does not say.
    pub available: u64,
}

impl Capacity {
    /// This machine's limits.
    pub fn detect() -> Capacity {
        let memory_limit = svmem::default_memory_limit();
        let available = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| mem_available(&s))
            .unwrap_or(memory_limit);
        Capacity {
            memory_limit,
            available,
        }
    }
}

/// `MemAvailable:  N kB` → N × 1024.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let n: u64 = line["MemAvailable:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    n.checked_mul(1024)
}

/// `b` as a size flag takes it: `1T`, `16G`, `1536M`, `64K`, `3`.
pub fn flag_size(b: u64) -> String {
    for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if b != 0 && b % (1u64 << shift) == 0 {
            return format!("{}{suffix}", b >> shift);
        }
    }
    b.to_string()
}

/// `21.7 GiB`, `2.0 MiB`, `3 B`.
pub fn human(b: u64) -> String {
    crate::units::human_bytes(b)
}

/// The largest power of two not above `b`, but at least one page: the
/// value a refusal suggests.
fn suggest_at_most(b: u64) -> u64 {
    if b < PAGE_SIZE as u64 {
        return PAGE_SIZE as u64;
    }
    1u64 << (63 - b.leading_zeros())
}

fn refuse(flag: &'static str, value: u64, problem: String, fix: String) -> FlagError {
    FlagError {
        flag,
        value: flag_size(value),
        problem,
        fix,
    }
}

/// Refuses a value below `min`; `why` says what the floor is for.
pub fn at_least(flag: &'static str, value: u64, min: u64, why: &str) -> Result<(), FlagError> {
    if value >= min {
        return Ok(());
    }
    Err(refuse(
        flag,
        value,
        format!("below the minimum of {} ({why})", human(min)),
        format!("{} or more", flag_size(min)),
    ))
}

/// Refuses a value that is not a whole number of 4 KiB pages.
pub fn whole_pages(flag: &'static str, value: u64, what: &str) -> Result<(), FlagError> {
    let page = PAGE_SIZE as u64;
    if value % page == 0 {
        return Ok(());
    }
    Err(refuse(
        flag,
        value,
        format!(
            "{what} whole 4 KiB pages, and {} is not a multiple of 4 KiB",
            human(value)
        ),
        flag_size(value.next_multiple_of(page)),
    ))
}

/// Refuses a value whose managed memory (`managed(value)` bytes) exceeds
/// the memory limit; `managed` must grow with the value.
pub fn managed_fits(
    flag: &'static str,
    value: u64,
    managed: impl Fn(u64) -> u64,
    cap: &Capacity,
) -> Result<(), FlagError> {
    let need = managed(value);
    if need <= cap.memory_limit {
        return Ok(());
    }
    let problem = if need == value {
        format!(
            "larger than this machine's memory limit of {}",
            human(cap.memory_limit)
        )
    } else {
        format!(
            "needs {} of managed memory, more than this machine's memory limit of {}",
            human(need),
            human(cap.memory_limit)
        )
    };
    Err(refuse(
        flag,
        value,
        problem,
        format!("{} or less", flag_size(largest(&managed, cap.memory_limit))),
    ))
}

/// Refuses a value whose committed memory (`committed(value)` bytes: device
/// memory, copy buffers, the data itself) exceeds what is available now.
pub fn committed_fits(
    flag: &'static str,
    value: u64,
    committed: impl Fn(u64) -> u64,
    what: &str,
    cap: &Capacity,
) -> Result<(), FlagError> {
    let need = committed(value);
    if need <= cap.available {
        return Ok(());
    }
    Err(refuse(
        flag,
        value,
        format!(
            "{what} {}, more than the {} of memory this machine has available now",
            human(need),
            human(cap.available)
        ),
        format!("{} or less", flag_size(largest(&committed, cap.available))),
    ))
}

/// The largest power of two `v` (at least a page) with `f(v) <= limit`.
fn largest(f: &impl Fn(u64) -> u64, limit: u64) -> u64 {
    let mut v = suggest_at_most(limit);
    while v > PAGE_SIZE as u64 && f(v) > limit {
        v /= 2;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn cap() -> Capacity {
        Capacity {
            memory_limit: 21 * GIB + 700 * (1 << 20),
            available: 18 * GIB,
        }
    }

    #[test]
    fn sizes_print_as_the_flag_takes_them() {
        assert_eq!(flag_size(1 << 40), "1T");
        assert_eq!(flag_size(16 * GIB), "16G");
        assert_eq!(flag_size(1536 << 20), "1536M");
        assert_eq!(flag_size(4096), "4K");
        assert_eq!(flag_size(3), "3");
        assert_eq!(human(21 * GIB + 700 * (1 << 20)), "21.7 GiB");
        assert_eq!(human(3), "3 B");
    }

    #[test]
    fn too_large_names_flag_value_limit_and_a_fix_that_passes() {
        let c = cap();
        let e = managed_fits("--size", 1 << 40, |v| v, &c).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "--size 1T: larger than this machine's memory limit of 21.7 GiB; use --size 16G or less"
        );
        assert!(managed_fits("--size", 16 * GIB, |v| v, &c).is_ok());
        // Three arrays: the fix is sized for all three.
        let e = managed_fits("--size", 8 * GIB, |v| 3 * v, &c).expect_err("refused");
        assert!(
            e.to_string().contains("needs 24.0 GiB of managed memory"),
            "{e}"
        );
        assert_eq!(e.fix, "4G or less");
        assert!(managed_fits("--size", 4 * GIB, |v| 3 * v, &c).is_ok());
    }

    #[test]
    fn committed_memory_is_checked_against_what_is_available() {
        let c = cap();
        let e = committed_fits("--device-memory", 100 * GIB, |v| v, "commits", &c)
            .expect_err("refused");
        assert_eq!(
            e.to_string(),
            "--device-memory 100G: commits 100.0 GiB, more than the 18.0 GiB of memory this \
             machine has available now; use --device-memory 16G or less"
        );
        let f = |v| v + 4 * GIB;
        let e = committed_fits("--device-memory", 16 * GIB, f, "commits", &c).expect_err("refused");
        assert_eq!(e.fix, "8G or less");
        assert!(committed_fits("--device-memory", 8 * GIB, f, "commits", &c).is_ok());
    }

    #[test]
    fn floors_and_pages() {
        let e = at_least("--device-memory", 1, 2 << 20, "one 2 MiB block").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "--device-memory 1: below the minimum of 2.0 MiB (one 2 MiB block); use --device-memory 2M or more"
        );
        assert!(at_least("--size", 16 << 20, 16 << 20, "x").is_ok());
        let e = whole_pages("--size", 3, "the demo moves").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "--size 3: the demo moves whole 4 KiB pages, and 3 B is not a multiple of 4 KiB; use --size 4K"
        );
        assert!(whole_pages("--size", 8192, "x").is_ok());
    }

    #[test]
    fn reads_mem_available() {
        let s = "MemTotal: 100 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(mem_available(s), Some(2 << 20));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        let c = Capacity::detect();
        assert!(c.memory_limit > 0 && c.available > 0);
    }
}
