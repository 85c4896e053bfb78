//! The cluster-token format.
//!
//! A cluster token is [`CLUSTER_TOKEN_PREFIX`] followed by
//! [`CLUSTER_TOKEN_SECRET_BYTES`] random bytes in unpadded URL-safe base64
//! ([`CLUSTER_TOKEN_SECRET_CHARS`] characters of `A-Z a-z 0-9 - _`). The fixed prefix
//! and length let secret scanners find leaked tokens with the pattern
//! `lapdev_ct_[A-Za-z0-9_-]{43}`. Generation (from a CSPRNG) and hashing live in
//! `lapdev-db`; this module only knows the shape, so every crate can reject a
//! malformed token before it reaches the database.

/// The recognisable start of every cluster token.
pub const CLUSTER_TOKEN_PREFIX: &str = "lapdev_ct_";

/// Number of random bytes in a token: 256 bits.
pub const CLUSTER_TOKEN_SECRET_BYTES: usize = 32;

/// Length of the base64url (unpadded) encoding of the random bytes.
pub const CLUSTER_TOKEN_SECRET_CHARS: usize = 43;

/// Total length of a cluster token.
pub const CLUSTER_TOKEN_LEN: usize = CLUSTER_TOKEN_PREFIX.len() + CLUSTER_TOKEN_SECRET_CHARS;

/// How many characters of the secret part are kept as the display prefix, so an admin
/// can tell tokens apart in a list without the list revealing them.
pub const CLUSTER_TOKEN_DISPLAY_SECRET_CHARS: usize = 6;

/// Whether `token` has the shape of a cluster token (prefix, length, alphabet).
///
/// A well-formed token is not necessarily a valid one; only the database can say that.
pub fn is_well_formed_cluster_token(token: &str) -> bool {
    match token.strip_prefix(CLUSTER_TOKEN_PREFIX) {
        Some(secret) => {
            secret.len() == CLUSTER_TOKEN_SECRET_CHARS
                && secret
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }
        None => false,
    }
}

/// The non-secret display prefix of a well-formed token (`lapdev_ct_` plus the first
/// [`CLUSTER_TOKEN_DISPLAY_SECRET_CHARS`] characters), or `None` for a malformed one.
pub fn cluster_token_display_prefix(token: &str) -> Option<&str> {
    if is_well_formed_cluster_token(token) {
        Some(&token[..CLUSTER_TOKEN_PREFIX.len() + CLUSTER_TOKEN_DISPLAY_SECRET_CHARS])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "lapdev_ct_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde";

    #[test]
    fn accepts_the_documented_shape() {
        assert_eq!(GOOD.len(), CLUSTER_TOKEN_LEN);
        assert!(is_well_formed_cluster_token(GOOD));
        assert_eq!(cluster_token_display_prefix(GOOD), Some("lapdev_ct_AbCdEf"));
    }

    #[test]
    fn rejects_other_shapes() {
        assert!(!is_well_formed_cluster_token(""));
        assert!(!is_well_formed_cluster_token(CLUSTER_TOKEN_PREFIX));
        assert!(!is_well_formed_cluster_token(&GOOD[..GOOD.len() - 1]));
        assert!(!is_well_formed_cluster_token(&format!("{GOOD}x")));
        assert!(!is_well_formed_cluster_token(
            &GOOD.replace("lapdev_ct_", "lapdev_xx_")
        ));
        assert!(!is_well_formed_cluster_token(&GOOD.replace('A', "+")));
        assert_eq!(cluster_token_display_prefix("lapdev_ct_short"), None);
    }
}
