//! Encryption of provider credentials at rest (AES-256-GCM from `ring`) and the
//! randomness and hashing behind cluster tokens.
//!
//! A stored credential is `version (1 byte) || nonce (12 bytes) || ciphertext || tag`.
//! The row's id is the associated data, so a ciphertext copied into another row does
//! not decrypt. The key is supplied by the caller (the server loads or generates it)
//! and never stored in the database.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const FORMAT_V1: u8 = 1;
const AAD_CONTEXT: &[u8] = b"lapdev/k8s_provider/credential/v1/";
/// The OpenID Connect client secret is sealed the same way, bound to its own
/// table, so a provider credential copied into it does not decrypt.
pub(crate) const OIDC_AAD_CONTEXT: &[u8] = b"lapdev/oidc_provider/client_secret/v1/";
/// The AAD context of a sealed OpenID Connect login step (`oidc_pending`).
pub(crate) const OIDC_PENDING_AAD_CONTEXT: &[u8] = b"lapdev/oidc_pending/v1/";

/// Length of a [`CredentialKey`] in bytes.
pub const CREDENTIAL_KEY_LEN: usize = 32;

/// Why a credential could not be encrypted or decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The key is not [`CREDENTIAL_KEY_LEN`] bytes long.
    #[error("the credential key must be {CREDENTIAL_KEY_LEN} bytes")]
    KeyLength,
    /// The stored bytes are not in a format this version writes.
    #[error("the stored credential has an unknown format")]
    UnknownFormat,
    /// Authentication failed: a different key, or the ciphertext was altered.
    #[error("the credential cannot be decrypted with this key (wrong key or tampered data)")]
    Decrypt,
    /// The system random number generator failed while making a nonce.
    #[error("no randomness for a nonce")]
    Random,
    /// Encryption failed (the plaintext is too long for AES-GCM).
    #[error("the credential cannot be encrypted")]
    Encrypt,
}

/// The 256-bit key that encrypts provider credentials.
#[derive(Clone)]
pub struct CredentialKey([u8; CREDENTIAL_KEY_LEN]);

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialKey(<redacted>)")
    }
}

impl CredentialKey {
    /// A key from exactly [`CREDENTIAL_KEY_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CredentialError> {
        let key: [u8; CREDENTIAL_KEY_LEN] =
            bytes.try_into().map_err(|_| CredentialError::KeyLength)?;
        Ok(CredentialKey(key))
    }

    /// A fresh random key (for the embedded first start and for tests).
    pub fn generate() -> Result<Self, CredentialError> {
        let mut key = [0u8; CREDENTIAL_KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| CredentialError::Random)?;
        Ok(CredentialKey(key))
    }

    /// The raw key bytes, for writing the key to its file.
    pub fn as_bytes(&self) -> &[u8; CREDENTIAL_KEY_LEN] {
        &self.0
    }

    fn aead(&self) -> LessSafeKey {
        // The length is fixed by the type, so `new` cannot fail.
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("32-byte AES-256 key"))
    }
}

/// A decrypted provider credential. Its `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderCredential(Vec<u8>);

impl std::fmt::Debug for ProviderCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProviderCredential(<{} bytes redacted>)", self.0.len())
    }
}

impl ProviderCredential {
    /// Wraps plaintext credential bytes (e.g. a service-account key JSON).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        ProviderCredential(bytes.into())
    }

    /// The plaintext, on purpose.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

fn aad(context: &[u8], row_id: Uuid) -> Vec<u8> {
    let mut aad = context.to_vec();
    aad.extend_from_slice(row_id.as_bytes());
    aad
}

/// Encrypts `plaintext` for the provider row `row_id`.
pub(crate) fn encrypt_credential(
    key: &CredentialKey,
    row_id: Uuid,
    plaintext: &ProviderCredential,
) -> Result<Vec<u8>, CredentialError> {
    seal(key, AAD_CONTEXT, row_id, plaintext)
}

/// Encrypts `plaintext` for the row `row_id` of the table named by `context`.
pub(crate) fn seal(
    key: &CredentialKey,
    context: &[u8],
    row_id: Uuid,
    plaintext: &ProviderCredential,
) -> Result<Vec<u8>, CredentialError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| CredentialError::Random)?;
    let mut in_out = plaintext.0.clone();
    key.aead()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(context, row_id)),
            &mut in_out,
        )
        .map_err(|_| CredentialError::Encrypt)?;
    let mut stored = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
    stored.push(FORMAT_V1);
    stored.extend_from_slice(&nonce);
    stored.extend_from_slice(&in_out);
    Ok(stored)
}

/// Decrypts what [`encrypt_credential`] stored for `row_id`.
pub(crate) fn decrypt_credential(
    key: &CredentialKey,
    row_id: Uuid,
    stored: &[u8],
) -> Result<ProviderCredential, CredentialError> {
    open(key, AAD_CONTEXT, row_id, stored)
}

/// Decrypts what [`seal`] stored for `row_id` under `context`.
pub(crate) fn open(
    key: &CredentialKey,
    context: &[u8],
    row_id: Uuid,
    stored: &[u8],
) -> Result<ProviderCredential, CredentialError> {
    let (&version, rest) = stored.split_first().ok_or(CredentialError::UnknownFormat)?;
    if version != FORMAT_V1 || rest.len() < NONCE_LEN {
        return Err(CredentialError::UnknownFormat);
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce =
        Nonce::try_assume_unique_for_key(nonce).map_err(|_| CredentialError::UnknownFormat)?;
    let mut in_out = sealed.to_vec();
    let plaintext = key
        .aead()
        .open_in_place(nonce, Aad::from(aad(context, row_id)), &mut in_out)
        .map_err(|_| CredentialError::Decrypt)?;
    Ok(ProviderCredential(plaintext.to_vec()))
}

/// `n` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(bytes)
}

/// Lowercase hex SHA-256 of a cluster token: what the database stores and looks up.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_binds_to_the_row() {
        let key = CredentialKey::generate().unwrap();
        let id = Uuid::new_v4();
        let secret = ProviderCredential::new(b"{\"private_key\":\"x\"}".to_vec());
        let stored = encrypt_credential(&key, id, &secret).unwrap();
        assert!(!stored.windows(11).any(|w| w == b"private_key"));
        assert_eq!(decrypt_credential(&key, id, &stored).unwrap(), secret);
        // Another row, another key, or a flipped bit all fail authentication.
        assert_eq!(
            decrypt_credential(&key, Uuid::new_v4(), &stored),
            Err(CredentialError::Decrypt)
        );
        let other = CredentialKey::generate().unwrap();
        assert_eq!(
            decrypt_credential(&other, id, &stored),
            Err(CredentialError::Decrypt)
        );
        let mut tampered = stored.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            decrypt_credential(&key, id, &tampered),
            Err(CredentialError::Decrypt)
        );
        assert_eq!(
            decrypt_credential(&key, id, &[2, 0, 0]),
            Err(CredentialError::UnknownFormat)
        );
    }

    #[test]
    fn nonces_differ() {
        let key = CredentialKey::generate().unwrap();
        let id = Uuid::new_v4();
        let secret = ProviderCredential::new(vec![7; 10]);
        assert_ne!(
            encrypt_credential(&key, id, &secret).unwrap(),
            encrypt_credential(&key, id, &secret).unwrap()
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let key = CredentialKey::from_bytes(&[0xAB; 32]).unwrap();
        assert!(!format!("{key:?}").contains("171"));
        assert!(CredentialKey::from_bytes(&[0; 31]).is_err());
        let cred = ProviderCredential::new(b"hunter2".to_vec());
        assert!(!format!("{cred:?}").contains("hunter2"));
    }
}
