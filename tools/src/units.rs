//! Sizes on the command line: parsed by `parse-size` (every suffix binary:
//! `64K`, `512M`, `1GiB`, `1 gb`), printed by `bytesize` in binary units.

use bytesize::ByteSize;

/// Parses `4096`, `64K`, `512M`, `1G`, `1.5G` (also `KiB`/`MiB`/`GiB`/`KB`/…,
/// any case; every suffix is binary). Errors name the value and the fix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if !t.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "`{s}` is not a size: expected a number of bytes with an optional K, M or G suffix (e.g. 4096, 64K, 512M, 1G)"
        ));
    }
    let cfg = parse_size::Config::new().with_binary();
    let bytes = cfg.parse_size(t).map_err(|e| match e {
        parse_size::Error::PosOverflow => format!("`{s}` is too large"),
        _ => {
            let suffix = t.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
            format!(
                "`{s}` has an unknown suffix `{}`: use K, M or G (KiB, MiB, GiB)",
                suffix.trim()
            )
        }
    })?;
    if bytes == 0 {
        return Err(format!("`{s}`: the size must be greater than zero"));
    }
    Ok(bytes)
}

/// `1.0 GiB`, `256.0 MiB`, `4.0 KiB`, `12 B`.
pub fn human_bytes(b: u64) -> String {
    ByteSize(b).display().iec().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1 GB"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        let e = parse_size("12Q").unwrap_err();
        assert!(e.contains("unknown suffix `Q`"), "{e}");
        let e = parse_size("M").unwrap_err();
        assert!(e.contains("not a size"), "{e}");
        let e = parse_size("0").unwrap_err();
        assert!(e.contains("greater than zero"), "{e}");
        let e = parse_size("99999999999999E").unwrap_err();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn bytes_print_in_binary_units() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(256 << 20), "256.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
