//! A small service shared by the integration tests, and helpers to serve it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapdev_hrpc::{Code, Context, HrpcError, ServerConfig};
use serde::{Deserialize, Serialize};

/// The identity an auth layer puts into request extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller(pub String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: i64,
    pub y: i64,
    /// Added later: old clients do not send it.
    #[serde(default)]
    pub label: Option<String>,
}

/// A method's own error type, converted to and from the wire error.
#[derive(Debug, PartialEq)]
pub enum TestError {
    NoSuchThing(String),
    Other(HrpcError),
}

impl From<HrpcError> for TestError {
    fn from(e: HrpcError) -> Self {
        if e.code == Code::NotFound {
            TestError::NoSuchThing(e.message)
        } else {
            TestError::Other(e)
        }
    }
}

impl From<TestError> for HrpcError {
    fn from(e: TestError) -> Self {
        match e {
            TestError::NoSuchThing(m) => HrpcError::not_found(m),
            TestError::Other(e) => e,
        }
    }
}

#[lapdev_hrpc::service]
pub trait Echo {
    /// Returns its argument.
    async fn echo(&self, message: String) -> Result<String, HrpcError>;
    async fn add(&self, a: i64, b: i64) -> Result<i64, HrpcError>;
    async fn mirror(&self, point: Point) -> Result<Point, HrpcError>;
    async fn whoami(&self, ctx: Context) -> Result<Option<String>, HrpcError>;
    async fn request_id(&self, ctx: Context) -> Result<String, HrpcError>;
    async fn fail(&self, code: Code, message: String) -> Result<(), HrpcError>;
    async fn lookup(&self, name: String) -> Result<u32, TestError>;
    async fn slow(&self, millis: u64) -> Result<(), HrpcError>;
    async fn explode(&self) -> Result<(), HrpcError>;
    async fn nothing(&self) -> Result<(), HrpcError>;
}

/// Counts how many `slow` calls finished and how many were dropped midway.
#[derive(Debug, Default)]
pub struct EchoImpl {
    pub slow_finished: AtomicUsize,
    pub slow_dropped: Arc<AtomicUsize>,
}

struct DropCounter(Arc<AtomicUsize>, bool);

impl Drop for DropCounter {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Echo for EchoImpl {
    async fn echo(&self, message: String) -> Result<String, HrpcError> {
        Ok(message)
    }

    async fn add(&self, a: i64, b: i64) -> Result<i64, HrpcError> {
        a.checked_add(b)
            .ok_or_else(|| HrpcError::new(Code::OutOfRange, "sum overflows i64"))
    }

    async fn mirror(&self, point: Point) -> Result<Point, HrpcError> {
        Ok(Point {
            x: -point.x,
            y: -point.y,
            label: point.label,
        })
    }

    async fn whoami(&self, ctx: Context) -> Result<Option<String>, HrpcError> {
        Ok(ctx.extension::<Caller>().map(|c| c.0.clone()))
    }

    async fn request_id(&self, ctx: Context) -> Result<String, HrpcError> {
        Ok(ctx.request_id().to_owned())
    }

    async fn fail(&self, code: Code, message: String) -> Result<(), HrpcError> {
        Err(HrpcError::new(code, message))
    }

    async fn lookup(&self, name: String) -> Result<u32, TestError> {
        match name.as_str() {
            "one" => Ok(1),
            _ => Err(TestError::NoSuchThing(format!("nothing called {name}"))),
        }
    }

    async fn slow(&self, millis: u64) -> Result<(), HrpcError> {
        let mut guard = DropCounter(self.slow_dropped.clone(), false);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        guard.1 = true;
        self.slow_finished.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn explode(&self) -> Result<(), HrpcError> {
        panic!("boom")
    }

    async fn nothing(&self) -> Result<(), HrpcError> {
        Ok(())
    }
}

/// The service's router, with a layer that marks callers sending `x-caller`.
pub fn router(service: Arc<EchoImpl>, config: ServerConfig) -> axum::Router {
    EchoServer::from_arc(service)
        .with_config(config)
        .into_router()
        .layer(axum::middleware::from_fn(
            |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
                if let Some(name) = req.headers().get("x-caller").and_then(|v| v.to_str().ok()) {
                    let caller = Caller(name.to_owned());
                    req.extensions_mut().insert(caller);
                }
                next.run(req).await
            },
        ))
}

/// Serves `router` under `/rpc` on a random loopback port.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().nest("/rpc", router);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// A raw HTTP/1.1 exchange, as `curl` would do it: returns status, headers
/// (lower-cased names) and body.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has a header block");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// A POST with the given content type and body, closing the connection after.
pub fn post(path: &str, content_type: Option<&str>, body: &[u8], extra: &str) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        req.push_str(&format!("content-type: {ct}\r\n"));
    }
    req.push_str(extra);
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Decodes an HRPC error body, failing the test if it is not one.
pub fn error_body(body: &[u8]) -> HrpcError {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not an HRPC error body ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })
}
