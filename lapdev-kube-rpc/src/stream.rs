//! The streaming contract between the server and a manager: session requests
//! and the frame format of an exec session's bodies.
//!
//! Streams are plain HTTP requests to the manager's router with a streamed
//! body each way (over the tunnel they ride HTTP/2 streams, so each is
//! flow-controlled on its own):
//!
//! - `POST /_stream/exec` with the [`ExecRequest`] as JSON in the
//!   [`STREAM_REQUEST_HEADER`] header. The request body carries client frames
//!   (stdin, end of input, resize), the `200` response body server frames
//!   (stdout, stderr, exit code or error). A refusal before the session starts
//!   is an ordinary HRPC error response (JSON `{code, message}`).
//! - `POST /_stream/portforward` with a [`PortForwardRequest`] in the same
//!   header: after a `200` the bodies are the connection's raw bytes each way.
//!   An error after the start (e.g. nothing listens on the port) ends the
//!   response body with a trailer named [`STREAM_ERROR_TRAILER`].
//!
//! # Exec frames
//!
//! Every frame is `type: u8`, `length: u32` (big-endian) and `length` bytes of
//! payload. A payload longer than [`MAX_FRAME_PAYLOAD`], an unknown type, or a
//! fixed-size frame of the wrong size is a [`FrameError`]: the receiver resets
//! that one stream (the tunnel and other streams are untouched).
//!
//! | type | direction | payload |
//! |---|---|---|
//! | `0x00` stdin | client → pod | bytes |
//! | `0x01` stdin end of input | client → pod | empty |
//! | `0x02` resize | client → pod | `cols: u16`, `rows: u16` (big-endian) |
//! | `0x10` stdout | pod → client | bytes |
//! | `0x11` stderr | pod → client | bytes |
//! | `0x12` exit | pod → client | `code: i32` (big-endian); the last frame |
//! | `0x13` error | pod → client | UTF-8 message; the last frame |

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The request header holding a stream's JSON request.
pub const STREAM_REQUEST_HEADER: &str = "x-lapdev-stream";
/// The response trailer naming why a port-forward ended early.
pub const STREAM_ERROR_TRAILER: &str = "x-lapdev-stream-error";
/// The manager's exec route.
pub const EXEC_PATH: &str = "/_stream/exec";
/// The manager's port-forward route.
pub const PORTFORWARD_PATH: &str = "/_stream/portforward";
/// The largest payload one frame may carry (64 KiB).
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;
/// Bytes before a frame's payload.
pub const FRAME_HEADER_LEN: usize = 5;

/// Run a command in a workspace's pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Which workspace; the pod is found from its label, never named here.
    pub workspace_id: Uuid,
    /// The command and its arguments (not run through a shell).
    pub command: Vec<String>,
    /// Allocate a pseudo-terminal (stdout and stderr then merge).
    #[serde(default)]
    pub tty: bool,
    /// Attach stdin.
    #[serde(default)]
    pub stdin: bool,
    /// The terminal's first size, when `tty`.
    #[serde(default)]
    pub size: Option<TerminalSize>,
}

/// Forward one connection to a port of a workspace's pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForwardRequest {
    /// Which workspace.
    pub workspace_id: Uuid,
    /// The pod's port.
    pub port: u16,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// One exec frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes for the command's stdin.
    Stdin(Bytes),
    /// No more stdin.
    StdinEnd,
    /// The terminal changed size.
    Resize(TerminalSize),
    /// Bytes the command wrote to stdout (or the terminal).
    Stdout(Bytes),
    /// Bytes the command wrote to stderr.
    Stderr(Bytes),
    /// The command exited with this code.
    Exit(i32),
    /// The session failed; the reason for people.
    Error(String),
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field exceeds [`MAX_FRAME_PAYLOAD`].
    #[error("stream frame of {0} bytes is over the {MAX_FRAME_PAYLOAD}-byte limit")]
    TooLarge(usize),
    /// The type byte is not one of the table's.
    #[error("unknown stream frame type {0:#04x}")]
    UnknownType(u8),
    /// A fixed-size frame has the wrong size, or a message is not UTF-8.
    #[error("malformed stream frame of type {kind:#04x}: {why}")]
    Malformed {
        /// The frame's type.
        kind: u8,
        /// What is wrong.
        why: &'static str,
    },
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame")]
    Truncated,
}

const STDIN: u8 = 0x00;
const STDIN_END: u8 = 0x01;
const RESIZE: u8 = 0x02;
const STDOUT: u8 = 0x10;
const STDERR: u8 = 0x11;
const EXIT: u8 = 0x12;
const ERROR: u8 = 0x13;

impl Frame {
    /// Appends the frame's bytes to `out`. Data longer than
    /// [`MAX_FRAME_PAYLOAD`] is split over several frames and empty data is no
    /// frame at all; an error message is cut to fit.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::Stdin(b) => data(out, STDIN, b),
            Frame::Stdout(b) => data(out, STDOUT, b),
            Frame::Stderr(b) => data(out, STDERR, b),
            Frame::StdinEnd => head(out, STDIN_END, 0),
            Frame::Resize(s) => {
                head(out, RESIZE, 4);
                out.put_u16(s.cols);
                out.put_u16(s.rows);
            }
            Frame::Exit(code) => {
                head(out, EXIT, 4);
                out.put_i32(*code);
            }
            Frame::Error(msg) => {
                let mut end = msg.len().min(MAX_FRAME_PAYLOAD);
                while !msg.is_char_boundary(end) {
                    end -= 1;
                }
                head(out, ERROR, end);
                out.put_slice(&msg.as_bytes()[..end]);
            }
        }
    }

    /// The frame's bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Takes one whole frame off the front of `buf`: `Ok(None)` when more bytes
    /// are needed (nothing is consumed then).
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let kind = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        if !matches!(
            kind,
            STDIN | STDIN_END | RESIZE | STDOUT | STDERR | EXIT | ERROR
        ) {
            return Err(FrameError::UnknownType(kind));
        }
        let fixed = match kind {
            STDIN_END => Some(0),
            RESIZE | EXIT => Some(4),
            _ => None,
        };
        if fixed.is_some_and(|f| f != len) {
            return Err(FrameError::Malformed {
                kind,
                why: "wrong payload size",
            });
        }
        if buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let mut payload = buf.split_to(len).freeze();
        Ok(Some(match kind {
            STDIN => Frame::Stdin(payload),
            STDOUT => Frame::Stdout(payload),
            STDERR => Frame::Stderr(payload),
            STDIN_END => Frame::StdinEnd,
            RESIZE => Frame::Resize(TerminalSize {
                cols: payload.get_u16(),
                rows: payload.get_u16(),
            }),
            EXIT => Frame::Exit(payload.get_i32()),
            _ => Frame::Error(String::from_utf8(payload.to_vec()).map_err(|_| {
                FrameError::Malformed {
                    kind,
                    why: "message is not UTF-8",
                }
            })?),
        }))
    }
}

fn head(out: &mut BytesMut, kind: u8, len: usize) {
    out.reserve(FRAME_HEADER_LEN + len);
    out.put_u8(kind);
    out.put_u32(len as u32);
}

fn data(out: &mut BytesMut, kind: u8, bytes: &[u8]) {
    for chunk in bytes.chunks(MAX_FRAME_PAYLOAD) {
        head(out, kind, chunk.len());
        out.put_slice(chunk);
    }
}

/// Decodes frames from a byte stream that arrives in arbitrary pieces.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived. After an error the stream must
    /// be reset: the decoder does not resynchronise.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        Frame::decode(&mut self.buf)
    }

    /// At the end of the stream: an error if it stopped inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Stdin(Bytes::from_static(b"ls\n")),
            Frame::StdinEnd,
            Frame::Resize(TerminalSize { cols: 80, rows: 24 }),
            Frame::Stdout(Bytes::from_static(b"\x00\xffbinary")),
            Frame::Stderr(Bytes::from_static(b"e")),
            Frame::Exit(-3),
            Frame::Error("pod is not running".into()),
        ]
    }

    #[test]
    fn every_frame_round_trips_even_byte_by_byte() {
        let mut wire = BytesMut::new();
        for f in all() {
            f.encode(&mut wire);
        }
        let mut d = FrameDecoder::default();
        let mut got = Vec::new();
        for b in wire.iter() {
            d.push(&[*b]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        d.finish().unwrap();
        assert_eq!(got, all());
        // Empty data is no frame at all (it would mean nothing).
        assert!(Frame::Stdin(Bytes::new()).to_bytes().is_empty());
    }

    #[test]
    fn large_data_is_split_at_the_limit() {
        let data = vec![7u8; MAX_FRAME_PAYLOAD * 2 + 1];
        let wire = Frame::Stdout(data.clone().into()).to_bytes();
        let mut buf = BytesMut::from(&wire[..]);
        let mut back = Vec::new();
        let mut frames = 0;
        while let Some(Frame::Stdout(b)) = Frame::decode(&mut buf).unwrap() {
            back.extend_from_slice(&b);
            frames += 1;
        }
        assert_eq!((frames, back), (3, data));
    }

    #[test]
    fn an_oversized_frame_is_refused_before_its_payload_arrives() {
        let mut buf = BytesMut::from(&[STDIN, 0, 1, 0, 1][..]);
        assert_eq!(
            Frame::decode(&mut buf),
            Err(FrameError::TooLarge(MAX_FRAME_PAYLOAD + 1))
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let cases: &[(&[u8], FrameError)] = &[
            (&[0x7f, 0, 0, 0, 0], FrameError::UnknownType(0x7f)),
            (
                &[RESIZE, 0, 0, 0, 3, 1, 2, 3],
                FrameError::Malformed {
                    kind: RESIZE,
                    why: "wrong payload size",
                },
            ),
            (
                &[STDIN_END, 0, 0, 0, 1, 0],
                FrameError::Malformed {
                    kind: STDIN_END,
                    why: "wrong payload size",
                },
            ),
            (
                &[ERROR, 0, 0, 0, 1, 0xff],
                FrameError::Malformed {
                    kind: ERROR,
                    why: "message is not UTF-8",
                },
            ),
        ];
        for (bytes, want) in cases {
            let mut buf = BytesMut::from(*bytes);
            assert_eq!(Frame::decode(&mut buf).as_ref(), Err(want), "{bytes:?}");
        }
        let mut d = FrameDecoder::default();
        d.push(&[STDIN, 0, 0, 0, 9, 1]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated));
    }

    #[test]
    fn a_long_error_message_is_cut_on_a_character_boundary() {
        let msg = "é".repeat(MAX_FRAME_PAYLOAD);
        let mut buf = BytesMut::from(&Frame::Error(msg).to_bytes()[..]);
        match Frame::decode(&mut buf).unwrap() {
            Some(Frame::Error(m)) => assert_eq!(m.len(), MAX_FRAME_PAYLOAD),
            other => panic!("{other:?}"),
        }
    }
}
