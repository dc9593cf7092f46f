//! Numbers from outside (client JSON, upstream headers and bodies, config files, the
//! command line) become `Duration`s and deadlines only through this module.
//!
//! `Duration::from_secs_f64` panics on NaN, negative and huge values, and
//! `Instant + Duration` panics on overflow; either is one hostile number away from a
//! dropped connection. Here every conversion is checked and capped at [`MAX`]: values a
//! client or an operator wrote are refused with a message that names the limit, values an
//! upstream sent are clamped (its Retry-After cannot be refused, only bounded).

use std::time::{Duration, Instant};

/// The longest duration anything may last: a year. Longer timeouts, TTLs or cooldowns
/// are mistakes (or attacks), and everything below it is far from overflowing a clock.
pub const MAX: Duration = Duration::from_secs(365 * 86_400);

/// How `MAX` reads in messages.
const MAX_TEXT: &str = "365d (31536000 seconds)";

/// Why a number cannot be a duration; the `Display` text is what users read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("duration {0} is not a number of seconds")]
    NotANumber(String),
    #[error("duration {0} is negative")]
    Negative(String),
    #[error("duration {0} is too long: at most {MAX_TEXT}")]
    TooLong(String),
    #[error("invalid duration {0:?}: expected e.g. \"500ms\", \"30s\", \"5m\", \"2h\", \"1d\"")]
    Syntax(String),
    #[error("invalid duration unit {unit:?} in {text:?}: use ms, s, m, h or d")]
    Unit { unit: String, text: String },
}

/// Seconds (a JSON or TOML float) as a duration: finite, ≥ 0 and at most [`MAX`].
pub fn from_secs_f64(secs: f64) -> Result<Duration, Invalid> {
    if secs.is_nan() {
        return Err(Invalid::NotANumber(secs.to_string()));
    }
    if secs < 0.0 {
        return Err(Invalid::Negative(secs.to_string()));
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX => Ok(d),
        _ => Err(Invalid::TooLong(secs.to_string())),
    }
}

/// Whole seconds as a duration, at most [`MAX`].
pub fn from_secs_u64(secs: u64) -> Result<Duration, Invalid> {
    let d = Duration::from_secs(secs);
    if d <= MAX {
        Ok(d)
    } else {
        Err(Invalid::TooLong(secs.to_string()))
    }
}

/// An upstream's number of seconds, clamped into `0..=MAX`; `None` when it is no
/// number at all (NaN) or negative, i.e. the upstream said nothing usable.
pub fn clamp_secs_f64(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).map_or(MAX, |d| d.min(MAX)))
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` or a bare number of seconds (the
/// config file, the command line and a request's `cache.ttl`).
pub fn parse(s: &str) -> Result<Duration, Invalid> {
    let text = s.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let value: f64 = num.parse().map_err(|_| Invalid::Syntax(text.into()))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(Invalid::Unit {
                unit: other.into(),
                text: text.into(),
            })
        }
    };
    from_secs_f64(value * scale).map_err(|e| match e {
        Invalid::TooLong(_) => Invalid::TooLong(format!("{text:?}")),
        _ => Invalid::Syntax(text.into()),
    })
}

/// `now + d`, or the latest deadline representable when that overflows the clock
/// (only possible for durations far beyond [`MAX`]).
pub fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(MAX))
        .unwrap_or(now)
}

/// [`deadline`] for tokio's timers.
pub fn tokio_deadline(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(deadline(now.into_std(), d))
}

/// `now_ms + d` in unix milliseconds, saturating instead of overflowing.
pub fn add_ms(now_ms: u64, d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_add(ms)
}

/// Seconds in a SLURM time limit: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
/// `None` for `UNLIMITED`/`INFINITE`, anything unparsable (SLURM will judge it) or a
/// value too large to count in seconds.
pub fn parse_time_limit(s: &str) -> Option<u64> {
    let s = s.trim();
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, Some(r)),
        None => (0, None),
    };
    let nums = |t: &str| -> Option<Vec<u64>> { t.split(':').map(|p| p.parse().ok()).collect() };
    let hms = |h: u64, m: u64, sec: u64| {
        h.checked_mul(3600)?
            .checked_add(m.checked_mul(60)?)?
            .checked_add(sec)
    };
    let secs = match rest {
        Some(r) => match nums(r)?.as_slice() {
            [h] => hms(*h, 0, 0)?,
            [h, m] => hms(*h, *m, 0)?,
            [h, m, sec] => hms(*h, *m, *sec)?,
            _ => return None,
        },
        None => match nums(s)?.as_slice() {
            [m] => hms(0, *m, 0)?,
            [m, sec] => hms(0, *m, *sec)?,
            [h, m, sec] => hms(*h, *m, *sec)?,
            _ => return None,
        },
    };
    days.checked_mul(86400)?.checked_add(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_limits() {
        assert_eq!(parse_time_limit("30"), Some(1800));
        assert_eq!(parse_time_limit("30:15"), Some(1815));
        assert_eq!(parse_time_limit("04:00:00"), Some(14400));
        assert_eq!(parse_time_limit("1-00:00:00"), Some(86400));
        assert_eq!(parse_time_limit("2-12"), Some(2 * 86400 + 12 * 3600));
        assert_eq!(parse_time_limit("UNLIMITED"), None);
        // Too large to count: refused, not wrapped (or a panic in a debug build).
        assert_eq!(parse_time_limit("99999999999999999-0"), None);
        assert_eq!(parse_time_limit("9999999999999999999:00:00"), None);
    }

    /// Extreme inputs every converter must survive without panicking.
    const EXTREME_F64: [f64; 16] = [
        0.0,
        -0.0,
        f64::NAN,
        -f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
        -1e300,
        18446744073709551616.0, // 2^64
        9223372036854775808.0,  // 2^63
        31_536_000.000_000_004, // just above MAX (rounds to MAX in f64)
        31_536_001.0,           // MAX + 1 s
        f64::MIN_POSITIVE,
        f64::EPSILON,
        1e-300,
        f64::MAX,
    ];

    #[test]
    fn f64_seconds_are_checked() {
        for x in EXTREME_F64 {
            match from_secs_f64(x) {
                Ok(d) => assert!(x >= 0.0 && d <= MAX, "{x} -> {d:?}"),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
            if let Some(d) = clamp_secs_f64(x) {
                assert!(d <= MAX, "{x}");
            } else {
                assert!(x.is_nan() || x < 0.0, "{x}");
            }
        }
        assert_eq!(from_secs_f64(2.5), Ok(Duration::from_millis(2500)));
        assert_eq!(from_secs_f64(-0.0), Ok(Duration::ZERO));
        assert!(matches!(
            from_secs_f64(f64::NAN),
            Err(Invalid::NotANumber(_))
        ));
        assert!(matches!(from_secs_f64(-1.0), Err(Invalid::Negative(_))));
        assert!(matches!(from_secs_f64(1e300), Err(Invalid::TooLong(_))));
        assert!(matches!(
            from_secs_f64(f64::INFINITY),
            Err(Invalid::TooLong(_))
        ));
        assert_eq!(from_secs_f64(31_536_000.0), Ok(MAX));
        assert_eq!(clamp_secs_f64(1e300), Some(MAX));
        assert_eq!(clamp_secs_f64(f64::INFINITY), Some(MAX));
        assert_eq!(clamp_secs_f64(3.0), Some(Duration::from_secs(3)));
        assert_eq!(clamp_secs_f64(-3.0), None);
    }

    #[test]
    fn u64_seconds_are_checked() {
        for x in [0, 1, 31_536_000, 31_536_001, 1 << 63, u64::MAX] {
            match from_secs_u64(x) {
                Ok(d) => assert!(d <= MAX),
                Err(e) => assert!(e.to_string().contains("at most 365d"), "{e}"),
            }
        }
    }

    #[test]
    fn text_durations_parse_or_explain() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("365d"), Ok(MAX));
        let cases = [
            "",
            " ",
            "d",
            ".",
            "..5s",
            "-1s",
            "+1s",
            "NaN",
            "nan s",
            "inf",
            "infinity",
            "1e300",
            "1e300s",
            "99999999999999999999d",
            "18446744073709551616",
            "9223372036854775808s",
            "366d",
            "3 fortnights",
            "5 parsecs",
            "1.2.3s",
            "10µs",
            "٣s",
            "1s2m",
        ];
        for c in cases {
            let e = parse(c).expect_err(c).to_string();
            assert!(!e.is_empty(), "{c}");
        }
        assert!(parse("99999999999999999999d")
            .unwrap_err()
            .to_string()
            .contains("at most 365d"));
        assert!(parse("3 fortnights")
            .unwrap_err()
            .to_string()
            .contains("use ms, s, m, h or d"));
    }

    #[test]
    fn random_text_never_panics() {
        let mut rng = fastrand::Rng::with_seed(9);
        let alphabet: Vec<char> = "0123456789.emsdh -+µ\u{0}\n".chars().collect();
        for _ in 0..20_000 {
            let len = rng.usize(0..24);
            let s: String = (0..len)
                .map(|_| alphabet[rng.usize(0..alphabet.len())])
                .collect();
            if let Ok(d) = parse(&s) {
                assert!(d <= MAX, "{s:?}");
            }
        }
    }

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        for d in [
            Duration::ZERO,
            MAX,
            Duration::MAX,
            Duration::from_secs(u64::MAX),
        ] {
            assert!(deadline(now, d) >= now);
        }
        let t = tokio::time::Instant::now();
        assert!(tokio_deadline(t, Duration::MAX) > t);
        assert_eq!(add_ms(u64::MAX - 1, Duration::MAX), u64::MAX);
        assert_eq!(add_ms(1000, Duration::from_secs(2)), 3000);
    }
}
