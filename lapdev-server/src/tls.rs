//! The TLS configuration the server terminates with. Handshakes run in
//! [`crate::serve`], off the accept loop, with a timeout and a cap on how many
//! are in progress.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain file could not be read or parsed.
    #[error("cannot read the TLS certificate chain {0}")]
    Certificate(String, #[source] rustls::pki_types::pem::Error),
    /// The key file could not be read or parsed.
    #[error("cannot read the TLS private key {0}")]
    Key(String, #[source] rustls::pki_types::pem::Error),
    /// rustls refused the pair.
    #[error("the TLS certificate and key do not form a usable configuration")]
    Config(#[source] rustls::Error),
}

/// A rustls server configuration (ring provider, HTTP/2 and HTTP/1.1 by ALPN).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate(cert.display().to_string(), e))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key(key.display().to_string(), e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Config)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
