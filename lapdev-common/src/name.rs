//! The rules for names people give things, written down once and checked at
//! every API that creates something (and again by the repository, as the last
//! line of defence).
//!
//! Two shapes:
//!
//! - **Resource names** ([`NameKind::Cluster`], [`NameKind::Workspace`]): a
//!   lowercase DNS label (RFC 1123), because they end up in URLs, CLI
//!   arguments, Kubernetes labels and log lines: 1 to 63 characters of `a`–`z`,
//!   `0`–`9` and `-`, starting with a letter and ending with a letter or digit.
//! - **Display names** ([`NameKind::Token`], [`NameKind::Provider`]): free text
//!   for people, 1 to 63 characters (Unicode scalar values), with no control
//!   characters at all (no NUL, newline, tab, escape, DEL or C1 controls, so a
//!   name can neither break a database driver nor forge a log or table line),
//!   and no whitespace at either end.
//!
//! Every error names the rule that failed ([`NameError`]); APIs report it as
//! `invalid_argument` with the request field in `details.field`.

use std::fmt;

/// The longest name of either shape, in characters.
pub const MAX_NAME_CHARS: usize = 63;

/// What is being named; decides the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A cluster (resource name).
    Cluster,
    /// A workspace (resource name).
    Workspace,
    /// A cluster token (display name).
    Token,
    /// A cloud provider (display name).
    Provider,
}

impl NameKind {
    /// How the kind is called in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "cluster name",
            Self::Workspace => "workspace name",
            Self::Token => "token name",
            Self::Provider => "provider name",
        }
    }

    fn is_resource(self) -> bool {
        matches!(self, Self::Cluster | Self::Workspace)
    }
}

/// Which rule a name broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid {}: {}", .kind.as_str(), .rule.reason())]
pub struct NameError {
    /// What was being named.
    pub kind: NameKind,
    /// The rule it broke.
    pub rule: NameRule,
}

/// The rules of the module docs, one variant each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// Empty.
    Empty,
    /// More than [`MAX_NAME_CHARS`] characters.
    TooLong,
    /// A resource name with a character outside `a-z0-9-`.
    NotDnsLabel,
    /// A resource name not starting with a letter or ending with `-`.
    BadEnds,
    /// A display name with a control character.
    ControlCharacter,
    /// A display name with whitespace at either end.
    OuterWhitespace,
}

impl NameRule {
    /// The rule in words.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Empty => "must not be empty",
            Self::TooLong => "must be at most 63 characters",
            Self::NotDnsLabel => "may contain only lowercase letters, digits and '-'",
            Self::BadEnds => "must start with a letter and end with a letter or digit",
            Self::ControlCharacter => "must not contain control characters",
            Self::OuterWhitespace => "must not start or end with whitespace",
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks `name` against the rules for `kind`.
pub fn validate(kind: NameKind, name: &str) -> Result<(), NameError> {
    let fail = |rule| Err(NameError { kind, rule });
    if name.is_empty() {
        return fail(NameRule::Empty);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return fail(NameRule::TooLong);
    }
    if kind.is_resource() {
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail(NameRule::NotDnsLabel);
        }
        let starts_with_letter = name.as_bytes()[0].is_ascii_lowercase();
        if !starts_with_letter || name.ends_with('-') {
            return fail(NameRule::BadEnds);
        }
    } else {
        if name.chars().any(char::is_control) {
            return fail(NameRule::ControlCharacter);
        }
        if name.trim() != name {
            return fail(NameRule::OuterWhitespace);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_are_dns_labels() {
        for ok in ["a", "dev-eu", "c1", &"a".repeat(63), "a-1-b"] {
            assert_eq!(validate(NameKind::Cluster, ok), Ok(()), "{ok}");
            assert_eq!(validate(NameKind::Workspace, ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", NameRule::Empty),
            (&*"a".repeat(64), NameRule::TooLong),
            ("Dev", NameRule::NotDnsLabel),
            ("dev_eu", NameRule::NotDnsLabel),
            ("dev eu", NameRule::NotDnsLabel),
            ("dev\0", NameRule::NotDnsLabel),
            ("dev\n", NameRule::NotDnsLabel),
            ("café", NameRule::NotDnsLabel),
            ("1abc", NameRule::BadEnds),
            ("-abc", NameRule::BadEnds),
            ("abc-", NameRule::BadEnds),
        ];
        for (name, rule) in cases {
            assert_eq!(
                validate(NameKind::Cluster, name),
                Err(NameError {
                    kind: NameKind::Cluster,
                    rule
                }),
                "{name:?}"
            );
        }
    }

    #[test]
    fn display_names_refuse_control_characters() {
        for ok in ["initial", "rotation 2026-01", "Prod GCP (EU)", "café ☕"] {
            assert_eq!(validate(NameKind::Token, ok), Ok(()), "{ok}");
            assert_eq!(validate(NameKind::Provider, ok), Ok(()), "{ok}");
        }
        for bad in [
            "a\0b",
            "a\nb",
            "a\tb",
            "\u{1b}[31mred",
            "a\u{7f}",
            "a\u{85}b",
        ] {
            assert_eq!(
                validate(NameKind::Token, bad).map_err(|e| e.rule),
                Err(NameRule::ControlCharacter),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate(NameKind::Provider, " gcp").map_err(|e| e.rule),
            Err(NameRule::OuterWhitespace)
        );
        // Characters, not bytes: 63 two-byte characters are fine.
        assert_eq!(validate(NameKind::Token, &"é".repeat(63)), Ok(()));
        assert_eq!(
            validate(NameKind::Token, &"é".repeat(64)).map_err(|e| e.rule),
            Err(NameRule::TooLong)
        );
    }

    #[test]
    fn messages_name_the_kind_and_the_rule() {
        let e = validate(NameKind::Workspace, "Bad").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid workspace name: may contain only lowercase letters, digits and '-'"
        );
    }
}
