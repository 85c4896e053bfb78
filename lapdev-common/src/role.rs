//! A user's role in their organisation, and the personal-access-token format.
//!
//! Roles are ordered: `member` < `admin` < `owner`; a method that needs `admin` is
//! allowed to admins and owners. An HRPC method declares the least role it needs
//! with `#[hrpc(role = "...")]` (one of [`Role::as_str`], or [`PUBLIC`] for the
//! few calls that need no identity, such as signing in).
//!
//! A personal access token is [`PAT_PREFIX`] plus 32 random bytes in unpadded
//! base64url, the same shape as a cluster token (`lapdev_pat_[A-Za-z0-9_-]{43}`), so
//! secret scanners can find leaked ones.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::status::ParseEnumError;
use crate::token::CLUSTER_TOKEN_SECRET_CHARS;

/// The declared "role" of a method that needs no identity at all.
pub const PUBLIC: &str = "public";

/// The recognisable start of every personal access token.
pub const PAT_PREFIX: &str = "lapdev_pat_";

/// Characters of the secret part kept as a token's display prefix.
pub const PAT_DISPLAY_SECRET_CHARS: usize = 6;

/// A user's role in their organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Creates and uses only their own workspaces; sees clusters' names, regions and
    /// free capacity.
    Member,
    /// Clusters, providers, cluster tokens and every workspace's lifecycle.
    Admin,
    /// Everything, including users and roles.
    Owner,
}

impl Role {
    /// Every role, least powerful first.
    pub const ALL: [Role; 3] = [Role::Member, Role::Admin, Role::Owner];

    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Whether this role may call a method that needs `required`.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ParseEnumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ParseEnumError {
                type_name: "Role",
                value: s.to_owned(),
            })
    }
}

/// Whether `token` has the shape of a personal access token.
pub fn is_well_formed_pat(token: &str) -> bool {
    token.strip_prefix(PAT_PREFIX).is_some_and(|secret| {
        secret.len() == CLUSTER_TOKEN_SECRET_CHARS
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The non-secret display prefix of a well-formed token.
pub fn pat_display_prefix(token: &str) -> Option<&str> {
    is_well_formed_pat(token).then(|| &token[..PAT_PREFIX.len() + PAT_DISPLAY_SECRET_CHARS])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::Owner.allows(Role::Admin));
        assert!(Role::Admin.allows(Role::Member));
        assert!(!Role::Member.allows(Role::Admin));
        assert!(!Role::Admin.allows(Role::Owner));
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert!("root".parse::<Role>().is_err());
        assert!(PUBLIC.parse::<Role>().is_err());
    }

    #[test]
    fn pat_shape() {
        let good = "lapdev_pat_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde";
        assert!(is_well_formed_pat(good));
        assert_eq!(pat_display_prefix(good), Some("lapdev_pat_AbCdEf"));
        assert!(!is_well_formed_pat(&good[..good.len() - 1]));
        assert!(!is_well_formed_pat(&good.replace("pat", "ct")));
    }
}
