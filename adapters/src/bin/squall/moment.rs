//! Points in time on the command line. Objects are stamped in microseconds since the Unix
//! epoch, which is what a put prints and what the wire carries, but nobody types that to
//! ask "what was this key an hour ago": `--time` also takes an RFC 3339 time, with any
//! offset, or a duration back from now.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What `--time` accepts, for its help and its errors.
pub const FORMS: &str = "microseconds since the Unix epoch (1795360744234537), an RFC 3339 \
    time (2026-11-24T03:00:00Z, 2026-11-24T04:00:00.5+01:00) or a duration back from now \
    (\"90s ago\", \"1h 30m ago\", -5m)";

/// Parses a `--time` argument into microseconds since the Unix epoch, reading the clock
/// for a relative one.
pub fn parse_arg(text: &str) -> Result<u64, String> {
    parse(text, now_us())
}

/// Parses `text` as one of [`FORMS`]; a relative time counts back from `now_us`.
pub fn parse(text: &str, now_us: u64) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(us) = text.parse::<u64>() {
        return Ok(us);
    }
    let back = text
        .strip_suffix("ago")
        .map(str::trim_end)
        .or_else(|| text.strip_prefix('-'));
    if let Some(duration) = back {
        let duration = humantime::parse_duration(duration.trim())
            .map_err(|e| format!("{text:?}: not a duration ({e}); expected {FORMS}"))?;
        let back_us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        return now_us
            .checked_sub(back_us)
            .ok_or_else(|| format!("{text:?} is before the Unix epoch"));
    }
    let at = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?}: {e}; expected {FORMS}"))?;
    let us = at.unix_timestamp_nanos() / 1_000;
    u64::try_from(us).map_err(|_| format!("{text:?} is before the Unix epoch"))
}

/// `us` since the Unix epoch as an RFC 3339 UTC time with microseconds, as printed beside
/// the number (which stays, since it is what `--time` and the API take exactly).
pub fn rfc3339(us: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{us} µs"))
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_US: u64 = 1_795_360_744_234_537;

    #[test]
    fn microseconds_pass_through() {
        assert_eq!(parse("1795360744234537", 0), Ok(NOW_US));
        assert_eq!(parse(" 0 ", 0), Ok(0));
    }

    #[test]
    fn rfc3339_times_with_any_offset() {
        assert_eq!(parse("2026-11-24T03:00:00Z", 0), Ok(1_795_489_200_000_000));
        assert_eq!(
            parse("2026-11-24T04:00:00.25+01:00", 0),
            Ok(1_795_489_200_250_000)
        );
        assert_eq!(parse("1970-01-01T00:00:00.000001Z", 0), Ok(1));
    }

    #[test]
    fn durations_count_back_from_now() {
        assert_eq!(parse("90s ago", NOW_US), Ok(NOW_US - 90_000_000));
        assert_eq!(parse("1h 30m ago", NOW_US), Ok(NOW_US - 5_400_000_000));
        assert_eq!(parse("-250ms", NOW_US), Ok(NOW_US - 250_000));
        assert_eq!(parse("2days ago", NOW_US), Ok(NOW_US - 172_800_000_000));
    }

    #[test]
    fn what_is_not_a_time_says_what_would_be() {
        for bad in [
            "yesterday",
            "5 parsecs ago",
            "2026-11-24",
            "2026-11-24T03:00:00",
            "-x",
            "",
        ] {
            let e = parse(bad, NOW_US).expect_err(bad);
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
        let e = parse("1969-12-31T23:59:59Z", NOW_US).expect_err("pre-epoch");
        assert!(e.contains("before the Unix epoch"), "{e}");
        let e = parse("100000 days ago", 1_000).expect_err("pre-epoch");
        assert!(e.contains("before the Unix epoch"), "{e}");
    }

    #[test]
    fn printed_times_parse_back() {
        assert_eq!(rfc3339(NOW_US), "2026-11-22T15:19:04.234537Z");
        assert_eq!(parse(&rfc3339(NOW_US), 0), Ok(NOW_US));
        assert_eq!(rfc3339(1_795_489_200_000_000), "2026-11-24T03:00:00Z");
    }
}
