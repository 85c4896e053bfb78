//! How user-facing messages write a time.

use chrono::{DateTime, SecondsFormat, Utc};

/// An absolute UTC time to the second in RFC 3339 form
/// (`2026-11-30T03:15:42Z`), as every status message, refusal and notice
/// writes it: it stays true however late it is read, and matches the `Z`
/// form of the API's JSON timestamps. Fractions of a second are dropped.
pub fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_in_utc_with_z() {
        let t = DateTime::parse_from_rfc3339("2026-12-08T14:01:25.912417+00:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(at(t), "2026-12-08T14:01:25Z");
    }
}
