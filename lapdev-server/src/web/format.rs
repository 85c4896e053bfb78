//! Human units and times for pages: cores, GiB, "3 min ago" (with the exact
//! UTC time on hover). The script formats live updates the same way.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

/// Millicores as cores: `0.5 cores`, `4 cores`.
pub fn cores(millis: i64) -> String {
    let c = millis as f64 / 1000.0;
    let text = if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{c:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    };
    if text == "1" {
        "1 core".into()
    } else {
        format!("{text} cores")
    }
}

/// Bytes as GiB with one decimal when needed: `1 GiB`, `0.5 GiB`.
pub fn gib(bytes: i64) -> String {
    let g = bytes as f64 / f64::from(1u32 << 30);
    let text = format!("{g:.1}");
    format!("{} GiB", text.trim_end_matches(".0"))
}

/// How long ago `at` was, in words.
pub fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds().max(0);
    match secs {
        0..=9 => "just now".into(),
        10..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// A `<time>` showing [`ago`] with the exact time as its title (and its
/// `datetime`, which the script re-reads to keep the words fresh).
pub fn time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => {
            let exact = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            html! { time datetime=(exact) title=(exact) { (ago(at, Utc::now())) } }
        }
        None => html! { "never" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_as_people_say_them() {
        assert_eq!(cores(500), "0.5 cores");
        assert_eq!(cores(1000), "1 core");
        assert_eq!(cores(4000), "4 cores");
        assert_eq!(cores(1250), "1.25 cores");
        assert_eq!(gib(1 << 30), "1 GiB");
        assert_eq!(gib(3 << 29), "1.5 GiB");
        let now = Utc::now();
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - chrono::Duration::minutes(5), now), "5 min ago");
        assert_eq!(ago(now - chrono::Duration::hours(50), now), "2 days ago");
    }
}
