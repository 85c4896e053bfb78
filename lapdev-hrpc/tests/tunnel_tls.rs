//! The manager end over `wss://`: rustls with the ring provider, the extra CA
//! from the config, and the server's certificate checked against it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use common::{EchoClient, EchoImpl};
use http::HeaderMap;
use lapdev_hrpc::tunnel::{
    self, TunnelClientConfig, TunnelConfig, TunnelConnectError, TunnelRegistry, TunnelTransport,
};
use lapdev_hrpc::{Client, ServerConfig};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A test CA, valid 2000–2999.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBkTCCATagAwIBAgIUOvoZE59S2mNUE2U/FIlZdSuEYhUwCgYIKoZIzj0EAwIw
JTEjMCEGA1UEAwwabGFwZGV2LWhycGMgdHVubmVsIHRlc3QgQ0EwIBcNMDAwMTAx
MDAwMDAwWhgPMjk5OTEyMzEwMDAwMDBaMCUxIzAhBgNVBAMMGmxhcGRldi1ocnBj
IHR1bm5lbCB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEw0FpwABy
PbGR4cIz/PluZC2Qiuq+SQ9C8PYzX6uP81G7i1Eyk/u/WKESE8Zqt2pRh0+nuf7C
RxUv0WwustzujaNCMEAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYw
HQYDVR0OBBYEFNwDQC4kQ/1sbRclFOHKyGZtD9qfMAoGCCqGSM49BAMCA0kAMEYC
IQCzLeSVmVgLxcp+hAOXNbFdJdyb0F+U7o/LfbDEs2pl1gIhAP8uzxtrJUC+Sxk4
rd5+S+98a/ywzow2cV2hAzTGtFLh
-----END CERTIFICATE-----
";

/// A server certificate for `localhost` and `127.0.0.1`, signed by the CA.
const SERVER_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnzCCAUWgAwIBAgIUWyS5hcDv02wDv1uVZ7VGzvjVOtkwCgYIKoZIzj0EAwIw
JTEjMCEGA1UEAwwabGFwZGV2LWhycGMgdHVubmVsIHRlc3QgQ0EwIBcNMDAwMTAx
MDAwMDAwWhgPMjk5OTEyMzEwMDAwMDBaMBQxEjAQBgNVBAMMCWxvY2FsaG9zdDBZ
MBMGByqGSM49AgEGCCqGSM49AwEHA0IABDzehz5JDDk0L34mn0tYpENXDFh6CXbm
dk4x6fbriMSRWKSB48bTpX6VZ+pLEwfHA7XA6yzVHlA2lpaQYV5mk62jYjBgMAwG
A1UdEwEB/wQCMAAwEwYDVR0lBAwwCgYIKwYBBQUHAwEwGgYDVR0RBBMwEYIJbG9j
YWxob3N0hwR/AAABMB8GA1UdIwQYMBaAFNwDQC4kQ/1sbRclFOHKyGZtD9qfMAoG
CCqGSM49BAMCA0gAMEUCIQD1oeG9JWza1oZwk7DoxnY/KajIubxZdrIbeaqparNB
pAIgBnSU7m7em/6U1kZyxbaM+CJ4bnT33C+cwSvtUx7bO2g=
-----END CERTIFICATE-----
";

const SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgvGOI6mBcL5TK+x1B
VuvHcvcQc4uIvBJexvZOieevwGqhRANCAAQ83oc+SQw5NC9+Jp9LWKRDVwxYegl2
5nZOMen264jEkVikgePG06V+lWfqSxMHxwO1wOss1R5QNpaWkGFeZpOt
-----END PRIVATE KEY-----
";

const PATIENCE: Duration = Duration::from_secs(10);

/// A TLS listener for `axum::serve`; failed handshakes are skipped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

type Registered = mpsc::UnboundedSender<TunnelTransport>;

async fn tunnel_route(State(tx): State<Registered>, ws: WebSocketUpgrade) -> Response {
    let config = TunnelConfig::default();
    config
        .configure_upgrade(ws)
        .on_upgrade(move |socket| async move {
            let (transport, task) = tunnel::accept(socket, config);
            let registry = TunnelRegistry::new();
            registry.insert("cluster", transport.clone());
            let _ = tx.send(transport);
            let _ = task.run().await;
        })
}

async fn tls_server() -> (SocketAddr, mpsc::UnboundedReceiver<TunnelTransport>) {
    let certs = vec![CertificateDer::from_pem_slice(SERVER_PEM.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/rpc/_tunnel", axum::routing::get(tunnel_route))
        .with_state(tx);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, rx)
}

fn echo_router() -> axum::Router {
    common::router(Arc::new(EchoImpl::default()), ServerConfig::default())
}

#[tokio::test]
async fn wss_with_an_extra_ca() {
    let (addr, mut registered) = tls_server().await;
    for url in [
        format!("https://localhost:{}/rpc/_tunnel", addr.port()),
        format!("wss://127.0.0.1:{}/rpc/_tunnel", addr.port()),
    ] {
        let session = tunnel::connect(
            &url,
            HeaderMap::new(),
            echo_router(),
            TunnelClientConfig {
                extra_root_certificates_pem: Some(CA_PEM.as_bytes().to_vec()),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{url}: {e:?}"));
        let handle = session.handle();
        tokio::spawn(session.run());
        let transport = tokio::time::timeout(PATIENCE, registered.recv())
            .await
            .unwrap()
            .unwrap();
        let client = EchoClient::new(
            Client::with_shared_transport("http://tunnel", Arc::new(transport)).unwrap(),
        );
        assert_eq!(client.echo("over tls".into()).await.unwrap(), "over tls");
        handle.close("done");
    }
}

#[tokio::test]
async fn wss_refuses_an_unknown_issuer() {
    let (addr, _registered) = tls_server().await;
    let err = tunnel::connect(
        &format!("wss://localhost:{}/rpc/_tunnel", addr.port()),
        HeaderMap::new(),
        echo_router(),
        TunnelClientConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TunnelConnectError::Connect(_)), "{err:?}");

    let err = tunnel::connect(
        &format!("wss://localhost:{}/rpc/_tunnel", addr.port()),
        HeaderMap::new(),
        echo_router(),
        TunnelClientConfig {
            extra_root_certificates_pem: Some(b"not pem".to_vec()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TunnelConnectError::Tls(_)), "{err:?}");
}
