//! Message sizes on the command line (`1KiB`, `64KiB`, `1MiB`, `16MiB`, `1000`, `2MB`) and
//! in case names.

const UNITS: [(&str, u64); 7] = [
    ("gib", 1 << 30),
    ("mib", 1 << 20),
    ("kib", 1 << 10),
    ("gb", 1_000_000_000),
    ("mb", 1_000_000),
    ("kb", 1_000),
    ("b", 1),
];

/// Parses a byte count: a whole number with an optional unit, binary (`KiB`, `MiB`, `GiB`)
/// or decimal (`KB`, `MB`, `GB`), case-insensitive; no unit (or `B`) means bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let (digits, multiplier) = UNITS
        .iter()
        .find_map(|(unit, mult)| lower.strip_suffix(unit).map(|d| (d.trim_end(), *mult)))
        .unwrap_or((lower.as_str(), 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{text}` is not a size: use a whole number with an optional unit \
             (B, KiB, MiB, GiB, KB, MB, GB), e.g. 1KiB or 65536"
        ));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}`: number too large"))?;
    let bytes = value
        .checked_mul(multiplier)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("`{text}`: size too large"))?;
    Ok(bytes)
}

/// The shortest exact name of a size: `1KiB`, `64KiB`, `16MiB`, `1000B`.
pub fn format_size(bytes: usize) -> String {
    for (unit, mult) in [("GiB", 1usize << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
    }
    format!("{bytes}B")
}

/// A rate in bytes per second for people: `123.4 MB/s` style, decimal units.
pub fn format_rate(bytes_per_s: f64) -> String {
    let units = [("GB/s", 1e9), ("MB/s", 1e6), ("KB/s", 1e3)];
    for (unit, scale) in units {
        if bytes_per_s >= scale {
            return format!("{:.1} {unit}", bytes_per_s / scale);
        }
    }
    format!("{bytes_per_s:.0} B/s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1kib"), Ok(1024));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size(" 8 KiB "), Ok(8192));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn refuses_malformed_sizes() {
        for bad in [
            "",
            "KiB",
            "1.5KiB",
            "-1",
            "1 TiB",
            "abc",
            "1KiBs",
            "1e3",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_size("18446744073709551615GiB").is_err());
    }

    #[test]
    fn names_sizes_exactly() {
        assert_eq!(format_size(1024), "1KiB");
        assert_eq!(format_size(64 * 1024), "64KiB");
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(16 << 20), "16MiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(1536), "1536B");
        assert_eq!(format_size(0), "0B");
        for size in [1, 1024, 1000, 3 << 20, 1 << 30] {
            assert_eq!(parse_size(&format_size(size)), Ok(size));
        }
    }

    #[test]
    fn formats_rates() {
        assert_eq!(format_rate(1.5e9), "1.5 GB/s");
        assert_eq!(format_rate(2.5e6), "2.5 MB/s");
        assert_eq!(format_rate(999.0), "999 B/s");
    }
}
