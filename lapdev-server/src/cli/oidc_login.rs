//! `lapdev login --oidc`: OpenID Connect sign-in for the CLI.
//!
//! The CLI listens on a loopback port, makes a PKCE verifier and opens the
//! browser at `{server}/auth/oidc/start?cli_port=P&cli_challenge=C`. After the
//! provider, the server redirects the browser to
//! `http://127.0.0.1:P/callback?code=…`: a one-time code that is worthless
//! without the verifier. The CLI POSTs code and verifier to
//! `/auth/cli/exchange` and receives a personal access token in the response
//! body (a token never travels in a URL). Without a browser, `lapdev login
//! --with-token` takes a pasted token instead.

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use lapdev_hrpc::{HttpTransport, HttpTransportConfig, Transport as _};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::auth::api::SignedIn;

/// How long the CLI waits for the browser.
pub const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);

/// The one-time code from the loopback request line `GET /callback?code=… HTTP/1.1`.
pub fn code_from_request_line(line: &str) -> Option<String> {
    let target = line.strip_prefix("GET ")?.split(' ').next()?;
    let query = target.strip_prefix("/callback?")?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "code")
        .map(|(_, v)| v.to_owned())
        .filter(|v| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Runs the login against `server` (its base URL) and returns what the
/// exchange answered.
pub async fn login(server: &str, token_name: &str) -> anyhow::Result<SignedIn> {
    let server = server.trim_end_matches('/');
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("listening on a loopback port for the browser")?;
    let port = listener.local_addr()?.port();
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let url = format!("{server}/auth/oidc/start?cli_port={port}&cli_challenge={challenge}");
    eprintln!("Opening the browser to sign in; if it does not open, visit:\n  {url}");
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let _ = std::process::Command::new(opener)
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();

    let code = tokio::time::timeout(BROWSER_TIMEOUT, async {
        loop {
            let (stream, _) = listener.accept().await?;
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let code = code_from_request_line(&line);
            let body = if code.is_some() {
                "Signed in. You can close this window and return to the terminal."
            } else {
                "Not a sign-in callback."
            };
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let mut stream = reader.into_inner();
            let _ = stream.write_all(reply.as_bytes()).await;
            if let Some(code) = code {
                return Ok::<_, std::io::Error>(code);
            }
        }
    })
    .await
    .context("no sign-in arrived from the browser in 5 minutes")?
    .context("receiving the browser's redirect")?;

    let transport =
        HttpTransport::new(HttpTransportConfig::default()).context("building the HTTP client")?;
    let body = serde_json::json!({
        "code": code, "code_verifier": verifier, "token_name": token_name,
    });
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("{server}/auth/cli/exchange"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body.to_string()))
        .context("building the exchange request")?;
    let response = transport
        .send(request)
        .await
        .context("exchanging the sign-in code")?;
    if !response.status().is_success() {
        anyhow::bail!(
            "the server refused the sign-in ({}): {}",
            response.status(),
            String::from_utf8_lossy(response.body()).trim()
        );
    }
    serde_json::from_slice(response.body()).context("reading the server's answer")
}

#[cfg(test)]
mod tests {
    use super::code_from_request_line;

    #[test]
    fn only_callback_codes_are_taken() {
        assert_eq!(
            code_from_request_line("GET /callback?code=abc_DEF-1 HTTP/1.1\r\n").as_deref(),
            Some("abc_DEF-1")
        );
        assert_eq!(code_from_request_line("GET /favicon.ico HTTP/1.1"), None);
        assert_eq!(
            code_from_request_line("POST /callback?code=a HTTP/1.1"),
            None
        );
        assert_eq!(
            code_from_request_line("GET /callback?code=a%20b HTTP/1.1"),
            None
        );
        assert_eq!(
            code_from_request_line("GET /callback?state=x HTTP/1.1"),
            None
        );
    }
}
