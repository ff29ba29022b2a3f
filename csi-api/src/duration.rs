//! The one grammar of every duration flag of the three binaries: a whole number with a unit,
//! `s`, `m`, `h` or `d` (`90s`, `30m`, `12h`, `7d`). A bare number counts as seconds (`0`,
//! `90`), which keeps every value either binary accepted before working. Nothing else: no
//! fractions, no compound values (`1h30m`), no `w` or `ms`; a value that overflows is refused.

use std::time::Duration;

/// Why a duration flag was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("invalid duration {0:?}: use a whole number with s, m, h or d, e.g. 90s, 30m, 12h, 7d")]
    Syntax(String),
    #[error("duration {0:?} is too long")]
    Overflow(String),
}

/// Parses `s` by the grammar of the module head.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(DurationError::Syntax(s.to_owned()));
    }
    let unit_secs: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(DurationError::Syntax(s.to_owned())),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| DurationError::Overflow(s.to_owned()))?;
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| DurationError::Overflow(s.to_owned()))
}

/// [`parse_duration`] with a `String` error, the shape clap's `value_parser` takes.
pub fn parse_flag(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds() {
        let secs = |s| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("7d"), Ok(604_800));
        assert_eq!(secs("12h"), Ok(43_200));
        assert_eq!(secs("30m"), Ok(1_800));
        assert_eq!(secs("90s"), Ok(90));
        // What the controller accepted before: a bare number is seconds.
        assert_eq!(secs("90"), Ok(90));
        assert_eq!(secs("0"), Ok(0));
        assert_eq!(secs("0s"), Ok(0));
    }

    #[test]
    fn anything_else_is_refused_with_the_grammar() {
        for bad in [
            "", "s", "1w", "1.5h", "1h30m", "-1s", " 1s", "1S", "10ms", "h1",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert_eq!(err, DurationError::Syntax(bad.to_owned()), "{bad:?}");
            assert!(parse_flag(bad).unwrap_err().contains("e.g. 90s"));
        }
        assert_eq!(
            parse_duration("213503982334602d"),
            Err(DurationError::Overflow("213503982334602d".into()))
        );
        assert_eq!(
            parse_duration("99999999999999999999"),
            Err(DurationError::Overflow("99999999999999999999".into()))
        );
    }
}
