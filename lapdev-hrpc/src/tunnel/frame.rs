//! Encoding and decoding of tunnel frames (the layout is specified in the
//! [`tunnel`](super) module docs).
//!
//! Decoding never panics: every length and field is checked, and anything that
//! is not a well-formed frame of a known type is a [`FrameError`]. A frame of an
//! unknown `type` decodes to [`Frame::Unknown`] so that newer peers can add frame
//! types.

use std::collections::BTreeMap;

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};

/// Length of the big-endian header length prefix.
pub(crate) const PREFIX_LEN: usize = 4;

/// One decoded tunnel frame.
#[derive(Debug)]
pub(crate) enum Frame {
    /// An HRPC request to be served by the receiving end.
    Request {
        id: u64,
        method: Method,
        path: String,
        headers: HeaderMap,
        body: Bytes,
    },
    /// The answer to the request with the same id.
    Response {
        id: u64,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// The sender gave up on the request with this id.
    Cancel { id: u64 },
    /// A frame type this implementation does not know; ignored.
    Unknown { kind: String },
}

/// Why a binary message is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("frame of {0} bytes is shorter than the 4-byte header length prefix")]
    TooShort(usize),
    #[error("frame header length {header} exceeds the {available} bytes after the prefix")]
    HeaderOverrun { header: usize, available: usize },
    #[error("frame header is not a JSON object with a string \"type\": {0}")]
    NotAnObject(String),
    #[error("invalid {kind:?} frame header: {message}")]
    InvalidHeader { kind: String, message: String },
}

/// The JSON header of a frame, as on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireHeader {
    Request {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        path: String,
        #[serde(default)]
        headers: WireHeaders,
    },
    Response {
        id: u64,
        status: u16,
        #[serde(default)]
        headers: WireHeaders,
    },
    Cancel {
        id: u64,
    },
}

/// Header map on the wire: lower-case name to one value, or to a list of values
/// when the name repeats.
type WireHeaders = BTreeMap<String, WireValue>;

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum WireValue {
    One(String),
    Many(Vec<String>),
}

/// Only the `type` of a header, to tell unknown frame types from malformed ones.
#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: String,
}

fn wire_headers(headers: &HeaderMap) -> WireHeaders {
    let mut out = WireHeaders::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| match v.to_str() {
                Ok(s) => Some(s.to_owned()),
                Err(_) => {
                    tracing::debug!(header = %name, "not forwarding a non-ASCII header value through the tunnel");
                    None
                }
            })
            .collect();
        let value = match values.len() {
            0 => continue,
            1 => WireValue::One(values.into_iter().next().unwrap_or_default()),
            _ => WireValue::Many(values),
        };
        out.insert(name.as_str().to_owned(), value);
    }
    out
}

fn header_map(kind: &str, wire: WireHeaders) -> Result<HeaderMap, FrameError> {
    let invalid = |message: String| FrameError::InvalidHeader {
        kind: kind.to_owned(),
        message,
    };
    let mut out = HeaderMap::with_capacity(wire.len());
    for (name, value) in wire {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("invalid header name {name:?}")))?;
        let values = match value {
            WireValue::One(v) => vec![v],
            WireValue::Many(vs) => vs,
        };
        for v in values {
            let v = HeaderValue::from_str(&v)
                .map_err(|_| invalid(format!("invalid value for header {name}")))?;
            out.append(name.clone(), v);
        }
    }
    Ok(out)
}

fn assemble(header: &WireHeader, body: &[u8]) -> Bytes {
    // Serialising this header cannot fail: strings, integers and maps of strings.
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + json.len() + body.len());
    // A JSON header over 4 GiB cannot be built from a request that fits in memory
    // limits enforced elsewhere; saturate rather than wrap just in case.
    buf.put_u32(u32::try_from(json.len()).unwrap_or(u32::MAX));
    buf.put_slice(&json);
    buf.put_slice(body);
    buf.freeze()
}

/// Encodes a request frame. `path` is the request target (path and query).
pub(crate) fn encode_request(
    id: u64,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Bytes {
    let header = WireHeader::Request {
        id,
        method: (method != Method::POST).then(|| method.as_str().to_owned()),
        path: path.to_owned(),
        headers: wire_headers(headers),
    };
    assemble(&header, body)
}

/// Encodes a response frame.
pub(crate) fn encode_response(
    id: u64,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Bytes {
    let header = WireHeader::Response {
        id,
        status: status.as_u16(),
        headers: wire_headers(headers),
    };
    assemble(&header, body)
}

/// Encodes a cancel frame.
pub(crate) fn encode_cancel(id: u64) -> Bytes {
    assemble(&WireHeader::Cancel { id }, &[])
}

/// Decodes one binary WebSocket message.
pub(crate) fn decode(message: Bytes) -> Result<Frame, FrameError> {
    let Some(prefix) = message.get(..PREFIX_LEN) else {
        return Err(FrameError::TooShort(message.len()));
    };
    let header_len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let available = message.len() - PREFIX_LEN;
    if header_len > available {
        return Err(FrameError::HeaderOverrun {
            header: header_len,
            available,
        });
    }
    let json = &message[PREFIX_LEN..PREFIX_LEN + header_len];
    let body = message.slice(PREFIX_LEN + header_len..);

    let kind = serde_json::from_slice::<TypeOnly>(json)
        .map_err(|e| FrameError::NotAnObject(e.to_string()))?
        .kind;
    if !matches!(kind.as_str(), "request" | "response" | "cancel") {
        return Ok(Frame::Unknown { kind });
    }
    let invalid = |message: String| FrameError::InvalidHeader {
        kind: kind.clone(),
        message,
    };
    let header: WireHeader = serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
    match header {
        WireHeader::Request {
            id,
            method,
            path,
            headers,
        } => {
            let method = match method {
                None => Method::POST,
                Some(m) => Method::from_bytes(m.as_bytes())
                    .map_err(|_| invalid(format!("invalid method {m:?}")))?,
            };
            if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                return Err(invalid(format!(
                    "path {path:?} is not an absolute path (and query)"
                )));
            }
            Ok(Frame::Request {
                id,
                method,
                path,
                headers: header_map(&kind, headers)?,
                body,
            })
        }
        WireHeader::Response {
            id,
            status,
            headers,
        } => {
            let status = StatusCode::from_u16(status)
                .map_err(|_| invalid(format!("invalid status {status}")))?;
            Ok(Frame::Response {
                id,
                status,
                headers: header_map(&kind, headers)?,
                body,
            })
        }
        WireHeader::Cancel { id } => Ok(Frame::Cancel { id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(header: &str, body: &[u8]) -> Bytes {
        let mut v = (header.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(body);
        Bytes::from(v)
    }

    #[test]
    fn request_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let bytes = encode_request(7, &Method::POST, "/Echo/echo", &headers, b"{\"m\":1}");
        match decode(bytes).unwrap() {
            Frame::Request {
                id,
                method,
                path,
                headers: h,
                body,
            } => {
                assert_eq!(id, 7);
                assert_eq!(method, Method::POST);
                assert_eq!(path, "/Echo/echo");
                assert_eq!(h, headers);
                assert_eq!(&body[..], b"{\"m\":1}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn response_and_cancel_round_trip() {
        let bytes = encode_response(9, StatusCode::NOT_FOUND, &HeaderMap::new(), b"xyz");
        assert!(matches!(
            decode(bytes).unwrap(),
            Frame::Response { id: 9, status, ref body, .. } if status == StatusCode::NOT_FOUND && &body[..] == b"xyz"
        ));
        assert!(matches!(
            decode(encode_cancel(3)).unwrap(),
            Frame::Cancel { id: 3 }
        ));
    }

    #[test]
    fn the_module_docs_example_is_exact() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("hrpc-version", HeaderValue::from_static("1"));
        let bytes = encode_request(1, &Method::POST, "/Echo/add", &headers, br#"{"a":1,"b":2}"#);
        let header = r#"{"type":"request","id":1,"path":"/Echo/add","headers":{"content-type":"application/json","hrpc-version":"1"}}"#;
        assert_eq!(header.len(), 0x6d);
        assert_eq!(&bytes[..4], &[0, 0, 0, 0x6d]);
        assert_eq!(&bytes[4..4 + 0x6d], header.as_bytes());
        assert_eq!(&bytes[4 + 0x6d..], br#"{"a":1,"b":2}"#);
    }

    #[test]
    fn documented_layout() {
        let f = raw(
            r#"{"type":"request","id":1,"path":"/Echo/add","headers":{"hrpc-version":"1"}}"#,
            b"{\"a\":1,\"b\":2}",
        );
        assert!(matches!(decode(f).unwrap(), Frame::Request { id: 1, .. }));
        let f = raw(r#"{"type":"response","id":1,"status":200}"#, b"3");
        assert!(matches!(decode(f).unwrap(), Frame::Response { id: 1, .. }));
    }

    #[test]
    fn unknown_types_and_fields_are_tolerated() {
        let f = raw(r#"{"type":"hello","whatever":[1,2]}"#, b"body");
        assert!(matches!(decode(f).unwrap(), Frame::Unknown { kind } if kind == "hello"));
        let f = raw(r#"{"type":"cancel","id":5,"extra":true}"#, b"");
        assert!(matches!(decode(f).unwrap(), Frame::Cancel { id: 5 }));
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(
            decode(Bytes::from_static(b"\0\0")).unwrap_err(),
            FrameError::TooShort(2)
        );
        assert!(matches!(
            decode(Bytes::from_static(b"\0\0\0\x10{}")).unwrap_err(),
            FrameError::HeaderOverrun { header: 16, .. }
        ));
        assert!(matches!(
            decode(raw("not json", b"")).unwrap_err(),
            FrameError::NotAnObject(_)
        ));
        assert!(matches!(
            decode(raw("[1,2]", b"")).unwrap_err(),
            FrameError::NotAnObject(_)
        ));
        assert!(matches!(
            decode(raw(r#"{"type":"request","id":1}"#, b"")).unwrap_err(),
            FrameError::InvalidHeader { .. }
        ));
        assert!(matches!(
            decode(raw(r#"{"type":"request","id":1,"path":"nope"}"#, b"")).unwrap_err(),
            FrameError::InvalidHeader { .. }
        ));
        assert!(matches!(
            decode(raw(r#"{"type":"response","id":1,"status":7}"#, b"")).unwrap_err(),
            FrameError::InvalidHeader { .. }
        ));
        assert!(matches!(
            decode(raw(
                r#"{"type":"response","id":1,"status":200,"headers":{"bad name":"x"}}"#,
                b""
            ))
            .unwrap_err(),
            FrameError::InvalidHeader { .. }
        ));
        assert!(matches!(
            decode(raw(r#"{"type":"cancel","id":-1}"#, b"")).unwrap_err(),
            FrameError::InvalidHeader { .. }
        ));
    }
}
