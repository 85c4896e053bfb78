//! Socket options for every TCP hop of a tunnel.

use tokio::net::TcpStream;

/// `TCP_NOTSENT_LOWAT` applied by [`tune_tcp`]: the kernel keeps at most this
/// much not-yet-sent data queued, so that bytes stay in the tunnel's own
/// (prioritised, flow-controlled) queues rather than behind a bulk transfer in
/// the socket buffer.
pub const NOTSENT_LOWAT_BYTES: u32 = 32 * 1024;

/// Sets `TCP_NODELAY` and, on Linux and Android, `TCP_NOTSENT_LOWAT`
/// ([`NOTSENT_LOWAT_BYTES`]) on a tunnel connection. Failures are logged and
/// ignored: both are optimisations.
pub fn tune_tcp(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT_BYTES) {
        tracing::debug!(error = %e, "could not set TCP_NOTSENT_LOWAT");
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    #[tokio::test]
    async fn both_options_are_set() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        super::tune_tcp(&stream);
        assert!(stream.nodelay().unwrap());
        let lowat = socket2::SockRef::from(&stream).tcp_notsent_lowat().unwrap();
        assert_eq!(lowat, super::NOTSENT_LOWAT_BYTES);
    }
}
