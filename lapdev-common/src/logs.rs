//! How the binaries write their logs: to stderr (stdout carries what a
//! command prints for its caller), coloured only on a terminal and never
//! with `NO_COLOR` set to a non-empty value (<https://no-color.org>).

use std::ffi::OsStr;
use std::io::IsTerminal as _;

/// Whether log lines on stderr should carry ANSI colours now.
pub fn colour() -> bool {
    colour_for(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colour_for(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_for(true, None));
        assert!(colour_for(true, Some(OsStr::new(""))), "empty means unset");
        assert!(!colour_for(true, Some(OsStr::new("1"))));
        assert!(!colour_for(false, None), "piped or collected");
    }
}
