//! Authentication between replicas: HMAC-SHA256 with a key derived (HKDF-SHA256)
//! from the credential-encryption key every replica of a deployment shares.
//!
//! A request carries [`SENDER_HEADER`] (the sender's replica id),
//! [`TIME_HEADER`] (its clock, unix seconds) and [`MAC_HEADER`]: the hex
//! HMAC-SHA256 over `v1`, the time, the method, the path, the sender and the
//! acting user ([`USER_HEADER`], empty when none), one per line. The receiver
//! refuses a MAC that does not verify (compared in constant time) or a time
//! more than [`MAX_SKEW_SECS`] from its own clock. There is no nonce: a
//! request captured on the wire could be replayed within that window, which is
//! one reason the internal port must stay on the pods' network, never behind
//! the public Service or Ingress.

use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use uuid::Uuid;

/// The sender's replica id.
pub const SENDER_HEADER: &str = "x-lapdev-replica";
/// The sender's time, unix seconds.
pub const TIME_HEADER: &str = "x-lapdev-replica-time";
/// The request's MAC, lower-case hex.
pub const MAC_HEADER: &str = "x-lapdev-replica-mac";
/// The user the call is made for (their id), when one is: covered by the MAC.
pub const USER_HEADER: &str = "x-lapdev-acting-user";
/// How far the sender's clock may be from the receiver's.
pub const MAX_SKEW_SECS: i64 = 60;

const INFO: &[u8] = b"lapdev replica routing v1";

/// The key replicas sign their internal requests with.
#[derive(Clone)]
pub struct ReplicaKey([u8; 32]);

impl std::fmt::Debug for ReplicaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaKey(<redacted>)")
    }
}

/// What a request says about itself, as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<'a> {
    /// Unix seconds on the sender.
    pub time: i64,
    /// The HTTP method.
    pub method: &'a str,
    /// The request's path (no query: internal requests have none).
    pub path: &'a str,
    /// The sender's replica id.
    pub sender: Uuid,
    /// The acting user, if any.
    pub user: Option<&'a str>,
}

/// Why a request was refused (the receiver answers 401 with no detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A header is missing or malformed.
    #[error("the replica authentication headers are missing or malformed")]
    Malformed,
    /// The sender's time is too far from the receiver's.
    #[error("the request's time is more than {MAX_SKEW_SECS} s from this replica's clock")]
    Stale,
    /// The MAC does not verify.
    #[error("the request's MAC does not verify")]
    BadMac,
}

impl ReplicaKey {
    /// The routing key derived from the shared credential-encryption key.
    pub fn derive(encryption_key: &[u8]) -> Self {
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(None, encryption_key)
            .expand(INFO, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self(key)
    }

    fn mac(&self, signed: &Signed<'_>) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        let text = format!(
            "v1\n{}\n{}\n{}\n{}\n{}",
            signed.time,
            signed.method,
            signed.path,
            signed.sender,
            signed.user.unwrap_or("")
        );
        mac.update(text.as_bytes());
        mac
    }

    /// The MAC of `signed`, lower-case hex.
    pub fn sign(&self, signed: &Signed<'_>) -> String {
        hex::encode(self.mac(signed).finalize().into_bytes())
    }

    /// Checks `mac_hex` for `signed`, and its time against `now` (unix seconds).
    pub fn verify(&self, signed: &Signed<'_>, mac_hex: &str, now: i64) -> Result<(), AuthError> {
        let given = hex::decode(mac_hex).map_err(|_| AuthError::Malformed)?;
        if (now - signed.time).abs() > MAX_SKEW_SECS {
            return Err(AuthError::Stale);
        }
        self.mac(signed)
            .verify_slice(&given)
            .map_err(|_| AuthError::BadMac)
    }
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(user: Option<&str>) -> Signed<'_> {
        Signed {
            time: 1_000,
            method: "POST",
            path: "/internal/v1/clusters/x/KubeManagerRpc/create_workspace",
            sender: Uuid::from_u128(7),
            user,
        }
    }

    #[test]
    fn a_signed_request_verifies_and_any_tampered_field_is_refused() {
        let key = ReplicaKey::derive(&[1u8; 32]);
        let s = signed(Some("u1"));
        let mac = key.sign(&s);
        assert_eq!(key.verify(&s, &mac, 1_000), Ok(()));
        assert_eq!(key.verify(&s, &mac, 1_060), Ok(()));
        let tampered = [
            Signed {
                time: 1_001,
                ..s.clone()
            },
            Signed {
                method: "GET",
                ..s.clone()
            },
            Signed {
                path: "/internal/v1/clusters/y/KubeManagerRpc/create_workspace",
                ..s.clone()
            },
            Signed {
                sender: Uuid::from_u128(8),
                ..s.clone()
            },
            Signed {
                user: Some("u2"),
                ..s.clone()
            },
            Signed {
                user: None,
                ..s.clone()
            },
        ];
        for t in &tampered {
            assert_eq!(key.verify(t, &mac, 1_000), Err(AuthError::BadMac), "{t:?}");
        }
        // Another deployment's key.
        let other = ReplicaKey::derive(&[2u8; 32]);
        assert_eq!(other.verify(&s, &mac, 1_000), Err(AuthError::BadMac));
        // A flipped MAC byte, a short MAC, not hex.
        let mut flipped = mac.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(key.verify(&s, &flipped, 1_000), Err(AuthError::BadMac));
        assert_eq!(key.verify(&s, &mac[..10], 1_000), Err(AuthError::BadMac));
        assert_eq!(key.verify(&s, "zz", 1_000), Err(AuthError::Malformed));
    }

    #[test]
    fn a_time_more_than_sixty_seconds_off_is_refused() {
        let key = ReplicaKey::derive(&[1u8; 32]);
        let s = signed(None);
        let mac = key.sign(&s);
        assert_eq!(key.verify(&s, &mac, 1_061), Err(AuthError::Stale));
        assert_eq!(key.verify(&s, &mac, 939), Err(AuthError::Stale));
        assert_eq!(key.verify(&s, &mac, 940), Ok(()));
    }
}
