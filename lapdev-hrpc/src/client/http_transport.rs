//! [`HttpTransport`]: HRPC over HTTP/1.1 or HTTP/2 on TCP, with TLS and a
//! connection pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{BoxError, Transport, TransportError};
use crate::protocol::DEFAULT_MAX_RESPONSE_BYTES;

/// Settings of an [`HttpTransport`].
#[derive(Debug, Clone)]
pub struct HttpTransportConfig {
    /// Speak HTTP/2 without negotiation on `http://` URLs (h2c). Over TLS the
    /// protocol is negotiated with ALPN regardless.
    pub http2_prior_knowledge: bool,
    /// How long opening a TCP connection may take.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Largest response body read; larger ones fail with
    /// [`TransportError::ResponseTooLarge`].
    pub max_response_bytes: usize,
    /// Extra PEM certificate authorities trusted besides the system's (e.g. a
    /// private CA in front of the Lapdev server).
    pub extra_root_certificates_pem: Option<Vec<u8>>,
    /// Proxy rules (`HTTPS_PROXY`/`NO_PROXY`); `None` connects directly.
    pub proxy: Option<crate::proxy::ProxyRules>,
}

impl Default for HttpTransportConfig {
    fn default() -> Self {
        Self {
            http2_prior_knowledge: false,
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            extra_root_certificates_pem: None,
            proxy: None,
        }
    }
}

/// The extra CA given to an [`HttpTransport`] could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The PEM data held no certificate, or one that could not be parsed.
    #[error("the extra CA is not valid PEM certificate data")]
    InvalidPem(#[source] rustls::pki_types::pem::Error),
    /// A certificate was rejected by the trust store.
    #[error("the extra CA certificate was rejected")]
    Rejected(#[source] rustls::Error),
    /// The PEM data held no certificate at all.
    #[error("the extra CA PEM data holds no certificate")]
    Empty,
}

/// HRPC over real HTTP. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct HttpTransport {
    // Behind an `Arc`: a call clones one pointer, not the client's several.
    client: Arc<HyperClient<HttpsConnector<crate::proxy::ProxyConnector>, Full<Bytes>>>,
    max_response_bytes: usize,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport trusting the system's certificate authorities plus the
    /// configured extra CA; fails if that CA cannot be used.
    pub fn new(config: HttpTransportConfig) -> Result<Self, TlsConfigError> {
        let tls = tls_config(config.extra_root_certificates_pem.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(crate::proxy::ProxyConnector::new(
                http,
                config.proxy.clone(),
            ));
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .http2_only(config.http2_prior_knowledge)
            .build(https);
        Ok(Self {
            client: Arc::new(client),
            max_response_bytes: config.max_response_bytes,
        })
    }
}

/// rustls with the ring provider, the system's roots and an optional extra CA;
/// shared by the HTTP transport and the tunnel's client end.
pub(crate) fn tls_config(
    extra_ca_pem: Option<&[u8]>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "skipping an unreadable system certificate");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(TlsConfigError::InvalidPem)?;
            roots.add(cert).map_err(TlsConfigError::Rejected)?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsConfigError::Empty);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Rejected)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

impl Transport for HttpTransport {
    fn send(
        &self,
        request: Request<Bytes>,
    ) -> BoxFuture<'static, Result<Response<Bytes>, TransportError>> {
        let client = self.client.clone();
        let limit = self.max_response_bytes;
        Box::pin(async move {
            let request = request.map(Full::new);
            let response = client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    TransportError::Connect(Box::new(e))
                } else {
                    TransportError::Closed(Box::new(e))
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e: BoxError| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        TransportError::ResponseTooLarge(limit)
                    } else {
                        TransportError::Closed(e)
                    }
                })?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        })
    }
}
