//! Admin API tokens: HS256 JWTs with issuer, audience and expiry checked. The
//! claims name the user and the organisation; every admin query is scoped to that
//! organisation.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who the token was issued by.
pub const ISSUER: &str = "lapdev";
/// Who the token is for: the admin API.
pub const AUDIENCE: &str = "lapdev-admin";

/// The claims of an admin token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The user's organisation.
    pub org: Uuid,
    pub iss: String,
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
}

/// The authenticated caller of an admin request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminIdentity {
    /// The user.
    pub user_id: Uuid,
    /// Their organisation.
    pub organization_id: Uuid,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The signing secret is too short to be safe.
    #[error("the JWT signing secret must be at least 32 bytes")]
    WeakSecret,
    /// The token could not be created.
    #[error("could not sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The token is not valid: bad signature, expired, wrong issuer or audience.
    #[error("{}", describe(.0))]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

/// Why a presented admin JWT was refused, in words.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "the admin JWT expired".into(),
        ErrorKind::InvalidSignature => {
            "the admin JWT was not signed by this server (another server's, or its JWT secret changed)".into()
        }
        ErrorKind::ImmatureSignature => "the admin JWT is not valid yet (clock skew?)".into(),
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
            "the admin JWT was issued for something else".into()
        }
        _ => format!(
            "not a token this server issues: expected a personal access token ({}…; `lapdev login` stores one)",
            lapdev_common::role::PAT_PREFIX
        ),
    }
}

/// Signs and verifies admin tokens with one secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(<redacted>)")
    }
}

impl JwtKeys {
    /// Keys from a shared secret of at least 32 bytes.
    pub fn from_secret(secret: &[u8]) -> Result<Self, JwtError> {
        if secret.len() < 32 {
            return Err(JwtError::WeakSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// A token for `user_id` of `organization_id`, valid for `ttl`.
    pub fn mint(
        &self,
        user_id: Uuid,
        organization_id: Uuid,
        ttl: Duration,
    ) -> Result<String, JwtError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            org: organization_id,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            exp: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            iat: now,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(JwtError::Sign)
    }

    /// Verifies a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<AdminIdentity, JwtError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(JwtError::Invalid)?;
        Ok(AdminIdentity {
            user_id: data.claims.sub,
            organization_id: data.claims.org,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::from_secret(&[7u8; 32]).unwrap()
    }

    #[test]
    fn a_minted_token_verifies() {
        let (user, org) = (Uuid::new_v4(), Uuid::new_v4());
        let token = keys().mint(user, org, Duration::from_secs(60)).unwrap();
        let id = keys().verify(&token).unwrap();
        assert_eq!((id.user_id, id.organization_id), (user, org));
    }

    #[test]
    fn another_secret_is_refused() {
        let token = keys()
            .mint(Uuid::new_v4(), Uuid::new_v4(), Duration::from_secs(60))
            .unwrap();
        let other = JwtKeys::from_secret(&[8u8; 32]).unwrap();
        assert!(other.verify(&token).is_err());
    }

    #[test]
    fn expired_wrong_audience_and_wrong_issuer_are_refused() {
        let k = keys();
        let now = Utc::now().timestamp();
        let sign = |claims: &Claims| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &k.encoding).unwrap()
        };
        let good = Claims {
            sub: Uuid::new_v4(),
            org: Uuid::new_v4(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: now + 60,
            iat: now,
        };
        assert!(k.verify(&sign(&good)).is_ok());
        let expired = Claims {
            exp: now - 3600,
            ..good.clone()
        };
        assert!(k.verify(&sign(&expired)).is_err());
        let audience = Claims {
            aud: "someone-else".into(),
            ..good.clone()
        };
        assert!(k.verify(&sign(&audience)).is_err());
        let issuer = Claims {
            iss: "evil".into(),
            ..good
        };
        assert!(k.verify(&sign(&issuer)).is_err());
        assert!(k.verify("not.a.jwt").is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            JwtKeys::from_secret(b"short"),
            Err(JwtError::WeakSecret)
        ));
    }
}
