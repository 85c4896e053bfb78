//! Authentication between replicas: HMAC-SHA256 with a key derived (HKDF-SHA256)
//! from the credential-encryption key every replica of a deployment shares.
//!
//! A request carries [`SENDER_HEADER`] (the sender's replica id),
//! [`TIME_HEADER`] (its clock, unix seconds), [`CONTENT_HEADER`] (the SHA-256
//! of the headers carried to the manager and, for a unary call, the body:
//! [`content_digest`]) and [`MAC_HEADER`]: the hex HMAC-SHA256 over `v1`, the
//! time, the method, the path, the sender, the acting user ([`USER_HEADER`],
//! empty when none) and the content digest, one per line. The receiver
//! refuses a MAC that does not verify (compared in constant time), a time
//! more than [`MAX_SKEW_SECS`] from its own clock, or a content digest that
//! does not match what arrived. There is no nonce: a request captured on the
//! wire could be replayed as it is within that window (never with another
//! body, command or port), which is one reason the internal port must stay on
//! the pods' network, never behind the public Service or Ingress.

use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use http::HeaderMap;
use sha2::Digest as _;
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

/// The SHA-256 (hex) of what a forwarded request asks of the manager: the
/// headers carried to it ([`super::forward::CARRIED_TO_MANAGER`]) and, for a
/// unary call, its body ([`content_digest`]). It is signed, so a request
/// captured on the wire cannot be replayed within the time window with
/// another body, command or port.
pub const CONTENT_HEADER: &str = "x-lapdev-content-sha256";

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
    /// The request's [`CONTENT_HEADER`] value (empty when absent).
    pub content: &'a str,
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
            "v1\n{}\n{}\n{}\n{}\n{}\n{}",
            signed.time,
            signed.method,
            signed.path,
            signed.sender,
            signed.user.unwrap_or(""),
            signed.content
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

/// The [`CONTENT_HEADER`] value of a request with these `headers` and, for
/// a unary call, `body` (a stream's body flows later and is not covered).
/// Each carried header is hashed as its name, its length-prefixed value (or
/// `-` when absent), so no two header sets hash alike.
pub fn content_digest(headers: &HeaderMap, body: Option<&[u8]>) -> String {
    let mut hash = sha2::Sha256::new();
    for name in super::forward::CARRIED_TO_MANAGER {
        hash.update(name.as_bytes());
        match headers.get(name) {
            Some(v) => {
                hash.update(format!(":{}:", v.len()).as_bytes());
                hash.update(v.as_bytes());
            }
            None => hash.update(b"-"),
        }
        hash.update(b"\n");
    }
    match body {
        Some(body) => {
            hash.update(format!("body:{}:", body.len()).as_bytes());
            hash.update(body);
        }
        None => hash.update(b"stream"),
    }
    hex::encode(hash.finalize())
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
            content: "c0ffee",
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
            Signed {
                content: "c0ffef",
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

    #[test]
    fn the_content_digest_changes_with_every_carried_header_and_the_body() {
        use lapdev_kube_rpc::stream::STREAM_REQUEST_HEADER;
        let mut h = HeaderMap::new();
        h.insert(
            STREAM_REQUEST_HEADER,
            "{\"command\":[\"ls\"]}".parse().unwrap(),
        );
        let base = content_digest(&h, Some(b"{}"));
        assert_eq!(base, content_digest(&h, Some(b"{}")));
        assert_ne!(base, content_digest(&h, Some(b"{ }")));
        assert_ne!(base, content_digest(&h, None));
        let mut other = h.clone();
        other.insert(
            STREAM_REQUEST_HEADER,
            "{\"command\":[\"rm\"]}".parse().unwrap(),
        );
        assert_ne!(base, content_digest(&other, Some(b"{}")));
        let mut more = h.clone();
        more.insert("hrpc-timeout-ms", "5".parse().unwrap());
        assert_ne!(base, content_digest(&more, Some(b"{}")));
        // Headers that are not carried to the manager do not count.
        let mut ignored = h.clone();
        ignored.insert("x-unrelated", "1".parse().unwrap());
        assert_eq!(base, content_digest(&ignored, Some(b"{}")));
    }
}
