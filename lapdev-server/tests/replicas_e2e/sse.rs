//! The dashboard's event stream (`GET /events`) as a browser opens it: a
//! user with a password signs in (`POST /auth/session`) and sends the
//! session cookie.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapdev_common::role::Role;
use lapdev_server::auth::api::PeopleRpcClient;

/// The session cookie's name.
const SESSION: &str = "__Host-lapdev_session";
const PASSWORD: &str = "a long enough password";

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Creates admin `user` with a password (as the owner `admin_token`) and
/// signs in on `url`: the cookie header.
pub async fn sign_in(url: &str, admin_token: &str, user: &str) -> String {
    let rpc = lapdev_hrpc::Client::http(&format!("{url}/rpc"))
        .unwrap()
        .with_timeout(Duration::from_secs(20))
        .with_header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {admin_token}")).unwrap(),
        );
    PeopleRpcClient::new(rpc)
        .create_user(user.into(), None, Role::Admin, Some(PASSWORD.into()))
        .await
        .unwrap();
    let body = format!(r#"{{"user":"{user}","password":"{PASSWORD}"}}"#);
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{url}/auth/session"))
        .header("content-type", "application/json")
        .header("x-lapdev-csrf", "1")
        .header("origin", super::PUBLIC_URL)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
        .headers()
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|kv| kv.starts_with(SESSION))
        .expect("a session cookie")
        .to_owned()
}

/// An open event stream.
pub struct Events {
    body: hyper::body::Incoming,
    buffer: String,
}

impl Events {
    pub async fn open(url: &str, cookie: &str) -> Events {
        let request = Request::builder()
            .uri(format!("{url}/events"))
            .header("cookie", cookie)
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Events {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event's name and data, skipping keep-alive comments.
    pub async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().into();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = v.trim().into();
                    }
                }
                if !name.is_empty() {
                    return (name, data);
                }
                continue;
            }
            let frame = self
                .body
                .frame()
                .await
                .expect("the stream stays open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}
