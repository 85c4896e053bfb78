//! Helpers for tests of the web dashboard over real HTTP: plain requests, a
//! browser's signed-in cookie, its HRPC calls (cookie, CSRF header, our
//! `Origin`) and an open event stream.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapdev_common::role::Role;
use lapdev_hrpc::Client;
use lapdev_server::auth::api::PeopleRpcClient;

use super::TestServer;

/// The public URL the test server is configured with.
pub const ORIGIN: &str = "https://lapdev.example.com";
/// The browser session cookie's name.
pub const SESSION: &str = "__Host-lapdev_session";

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn client() -> HyperClient<HttpConnector, Full<Bytes>> {
    HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut r = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        client().request(request(method, url, headers, body)),
    )
    .await
    .expect("no answer in 30 s")
    .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub fn bearer(t: &TestServer) -> Client {
    Client::http(&format!("{}/rpc", t.base()))
        .unwrap()
        .with_timeout(Duration::from_secs(20))
        .with_header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {}", t.admin_token)).unwrap(),
        )
}

/// A user with a password and role, signed in as a browser: the cookie header.
pub async fn browser(t: &TestServer, name: &str, role: Role) -> String {
    PeopleRpcClient::new(bearer(t))
        .create_user(
            name.into(),
            None,
            role,
            Some("a long enough password".into()),
        )
        .await
        .unwrap();
    let body = format!(r#"{{"user":"{name}","password":"a long enough password"}}"#);
    let r = send(
        Method::POST,
        &format!("{}/auth/session", t.base()),
        &[
            ("content-type", "application/json"),
            ("x-lapdev-csrf", "1"),
            ("origin", ORIGIN),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|kv| kv.starts_with(SESSION))
        .expect("a session cookie")
        .to_owned()
}

pub async fn page(t: &TestServer, path: &str, cookie: &str) -> Reply {
    send(
        Method::GET,
        &format!("{}{path}", t.base()),
        &[("cookie", cookie)],
        "",
    )
    .await
}

/// A browser's HRPC call: cookie, CSRF header, our Origin.
pub async fn call(t: &TestServer, cookie: &str, path: &str, body: &str) -> Reply {
    send(
        Method::POST,
        &format!("{}/rpc/{path}", t.base()),
        &[
            ("cookie", cookie),
            ("content-type", "application/json"),
            ("x-lapdev-csrf", "1"),
            ("origin", ORIGIN),
        ],
        body,
    )
    .await
}

/// An open event stream.
pub struct Events {
    body: hyper::body::Incoming,
    buffer: String,
}

impl Events {
    pub async fn open(
        t: &TestServer,
        cookie: &str,
        last_event_id: Option<&str>,
    ) -> (Reply, Events) {
        let mut headers = vec![("cookie", cookie), ("accept", "text/event-stream")];
        if let Some(id) = last_event_id {
            headers.push(("last-event-id", id));
        }
        let response = client()
            .request(request(
                Method::GET,
                &format!("{}/events", t.base()),
                &headers,
                "",
            ))
            .await
            .unwrap();
        let head = Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: Bytes::new(),
        };
        (
            head,
            Events {
                body: response.into_body(),
                buffer: String::new(),
            },
        )
    }

    /// The next event (id, name, data), skipping keep-alive comments.
    pub async fn next(&mut self) -> (String, String, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut name, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().into();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().into();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = v.trim().into();
                    }
                }
                if !name.is_empty() {
                    return (id, name, data);
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
                .await
                .expect("no event in 30 s")
                .expect("the stream ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    /// Whether the body ends (after any keep-alive comments) within 30 s.
    pub async fn finished(&mut self) -> bool {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.body.frame()).await {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && String::from_utf8_lossy(&data).contains("event:")
                    {
                        return false;
                    }
                }
            }
        }
    }
}
