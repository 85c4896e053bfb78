//! The connection loop both tunnel ends share: reads and decodes frames, writes
//! queued messages, pings the peer and notices when it stops answering.
//!
//! The WebSocket implementations of the two ends differ (axum's on the server,
//! tokio-tungstenite on the manager); both are adapted to [`WsMsg`] so that
//! everything here is written once.

use std::pin::pin;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::CloseReason;
use super::coalesce::Gated;
use super::frame::{self, Frame};

/// How long a closing end tries to send its close frame and wait for the peer's
/// answer before dropping the connection.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Outbound queue depth: senders wait (back-pressure) when this many messages are
/// queued and not yet written.
pub(crate) const OUTBOUND_QUEUE: usize = 64;

/// WebSocket close codes used by the tunnel (RFC 6455 §7.4.1).
pub(crate) mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
}

/// A WebSocket message, independent of the WebSocket implementation.
#[derive(Debug)]
pub(crate) enum WsMsg {
    Binary(Bytes),
    Text,
    Ping(Bytes),
    Pong(Bytes),
    Close(Option<(u16, String)>),
}

/// Limits and timers of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkConfig {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_frame_bytes: usize,
    /// Version 2: queued messages are written back to back and the socket is
    /// flushed once the queue is empty. Version 1 (today's behaviour, kept
    /// as-is for managers not yet upgraded) flushes after every message.
    pub coalesce_writes: bool,
    /// Version 2: each part of the loop (reader, writer, close watch,
    /// liveness timer) is polled only when it was woken, not whenever the
    /// task is.
    pub gate_parts: bool,
}

/// Where the binary messages a connection receives go.
pub(crate) trait Inbound: Send {
    /// Takes one binary message (already checked against the size limit).
    /// Waiting here holds back reading from the socket (back-pressure).
    fn binary(&mut self, data: Bytes) -> impl Future<Output = FrameResult> + Send;
}

/// Version 1: every binary message is one frame, decoded and handed to `F`.
pub(crate) struct Frames<F>(pub F);

impl<F: FnMut(Frame) -> FrameResult + Send> Inbound for Frames<F> {
    fn binary(&mut self, data: Bytes) -> impl Future<Output = FrameResult> + Send {
        let result = match frame::decode(data) {
            Ok(Frame::Unknown { kind }) => {
                tracing::debug!(kind, "ignoring a tunnel frame of unknown type");
                Ok(())
            }
            Ok(f) => (self.0)(f),
            Err(e) => Err(CloseReason::Protocol(e.to_string())),
        };
        std::future::ready(result)
    }
}

/// Closing state shared by a connection's handles and its loop: the first
/// [`CloseReason`] wins.
#[derive(Debug)]
pub(crate) struct Control {
    closed: watch::Sender<Option<CloseReason>>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            closed: watch::Sender::new(None),
        }
    }
}

impl Control {
    /// Marks the connection closed for `reason`; returns false if it already was.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut reason = Some(reason);
        self.closed.send_if_modified(|current| {
            if current.is_none() {
                *current = reason.take();
                true
            } else {
                false
            }
        })
    }

    /// Why the connection closed, if it did.
    pub fn reason(&self) -> Option<CloseReason> {
        self.closed.borrow().clone()
    }

    /// Waits until the connection is closed and returns why.
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + 'static {
        let mut rx = self.closed.subscribe();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(r) => r.clone().unwrap_or(CloseReason::Dropped),
                // The sender lives in `Control`, which the caller holds; unreachable
                // in practice, and "dropped" is the truth if it happens.
                Err(_) => CloseReason::Dropped,
            }
        }
    }
}

/// What a frame handler tells the loop.
pub(crate) type FrameResult = Result<(), CloseReason>;

/// The socket halves after the loop ended, for the closing handshake.
pub(crate) struct Closing<Si, St> {
    sink: Si,
    stream: St,
}

/// Runs the connection until it ends and returns why. Decoded frames go to
/// `on_frame`; messages in `outbound` are written in order; the peer is pinged
/// every `ping_interval` and the connection ends if nothing at all arrives from
/// it within `ping_timeout`. A close through `control` ends it too.
///
/// The returned [`Closing`] finishes the close handshake; the caller first fails
/// whatever depends on the connection, so that nothing waits on the grace period.
pub(crate) async fn drive<S, E>(
    socket: S,
    mut outbound: mpsc::Receiver<WsMsg>,
    control: &Control,
    config: LinkConfig,
    map_err: fn(E) -> CloseReason,
    mut inbound: impl Inbound,
) -> (
    CloseReason,
    Closing<futures::stream::SplitSink<S, WsMsg>, futures::stream::SplitStream<S>>,
)
where
    S: Stream<Item = Result<WsMsg, E>> + Sink<WsMsg, Error = E> + Send + Unpin,
    E: Send,
{
    let (mut sink, mut stream) = socket.split();
    let last_seen = Mutex::new(Instant::now());
    let touch = || {
        if let Ok(mut t) = last_seen.lock() {
            *t = Instant::now();
        }
    };
    let ping_interval = config.ping_interval.max(Duration::from_millis(1));
    // The peer's close, once read. The WebSocket library answers a close as it
    // reads it and refuses every later send ("Sending after closing"), so a
    // writer that fails after it reports the peer's close, not its own error.
    let peer_closed: Mutex<Option<CloseReason>> = Mutex::new(None);
    let write_failed = |e: E| -> CloseReason {
        match peer_closed.lock().ok().and_then(|p| p.clone()) {
            Some(peer) => peer,
            None => map_err(e),
        }
    };

    let reason = {
        let reader = async {
            let mut peer_close: Option<CloseReason> = None;
            while let Some(item) = stream.next().await {
                touch();
                let msg = match item {
                    Ok(m) => m,
                    Err(e) => return peer_close.unwrap_or_else(|| map_err(e)),
                };
                if peer_close.is_some() {
                    // After the peer's close only the end of the stream matters.
                    continue;
                }
                match msg {
                    WsMsg::Binary(data) => {
                        if data.len() > config.max_frame_bytes {
                            return CloseReason::FrameTooLarge {
                                size: data.len(),
                                limit: config.max_frame_bytes,
                            };
                        }
                        if let Err(reason) = inbound.binary(data).await {
                            return reason;
                        }
                    }
                    WsMsg::Text => {
                        return CloseReason::Protocol(
                            "text message received; tunnel frames are binary messages".into(),
                        );
                    }
                    WsMsg::Ping(_) | WsMsg::Pong(_) => {}
                    WsMsg::Close(frame) => {
                        let (code, reason) = match frame {
                            Some((code, reason)) => (Some(code), reason),
                            None => (None, String::new()),
                        };
                        // Keep reading: the WebSocket library answers the close and
                        // the stream ends once the handshake is done.
                        let peer = CloseReason::Peer { code, reason };
                        if let Ok(mut p) = peer_closed.lock() {
                            *p = Some(peer.clone());
                        }
                        peer_close = Some(peer);
                    }
                }
            }
            peer_close.unwrap_or_else(|| {
                CloseReason::Io("the connection ended without a close frame".into())
            })
        };
        let writer = async {
            let start = Instant::now() + ping_interval;
            let mut ping = tokio::time::interval_at(start, ping_interval);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let msg = tokio::select! {
                    biased;
                    m = outbound.recv() => match m {
                        Some(m) => m,
                        // Every handle is gone; only a close can end the loop now.
                        None => std::future::pending().await,
                    },
                    _ = ping.tick() => WsMsg::Ping(Bytes::new()),
                };
                if !config.coalesce_writes {
                    if let Err(e) = sink.send(msg).await {
                        return write_failed(e);
                    }
                    continue;
                }
                // Write what is queued back to back; flush when the queue is
                // empty (never on a timer), so a burst costs one flush.
                if let Err(e) = sink.feed(msg).await {
                    return write_failed(e);
                }
                while let Ok(msg) = outbound.try_recv() {
                    if let Err(e) = sink.feed(msg).await {
                        return write_failed(e);
                    }
                }
                if let Err(e) = sink.flush().await {
                    return write_failed(e);
                }
            }
        };
        let liveness = async {
            loop {
                let seen = last_seen
                    .lock()
                    .map(|t| *t)
                    .unwrap_or_else(|_| Instant::now());
                let deadline = seen + config.ping_timeout;
                if Instant::now() >= deadline {
                    return CloseReason::PingTimeout(config.ping_timeout);
                }
                tokio::time::sleep_until(deadline).await;
            }
        };
        // Version 2 polls each part only when it was woken (see `Gated`);
        // version 1 polls every part on every wake, as it always did.
        let gate = config.gate_parts;
        let (reader, closed, writer, liveness) = (
            pin!(reader),
            pin!(control.closed()),
            pin!(writer),
            pin!(liveness),
        );
        // Biased: after a stall (a busy runtime), whatever the peer sent in the
        // meantime is read before the liveness deadline is judged.
        tokio::select! {
            biased;
            r = Gated::new(reader, gate) => r,
            r = Gated::new(closed, gate) => r,
            r = Gated::new(writer, gate) => r,
            r = Gated::new(liveness, gate) => r,
        }
    };
    // The first reason wins: a local close that raced with an I/O error stays a
    // local close.
    control.close(reason.clone());
    let reason = control.reason().unwrap_or(reason);
    (reason, Closing { sink, stream })
}

impl<Si, St, E> Closing<Si, St>
where
    Si: Sink<WsMsg, Error = E> + Unpin,
    St: Stream<Item = Result<WsMsg, E>> + Unpin,
{
    /// Sends the close frame `reason` calls for (none if the peer closed, the
    /// connection broke or the peer stopped answering) and waits, at most [`CLOSE_GRACE`], for the peer to
    /// finish the handshake.
    pub async fn finish(mut self, reason: &CloseReason) {
        let code = match reason {
            CloseReason::Local(_) | CloseReason::Dropped => close_code::NORMAL,
            CloseReason::Protocol(_) => close_code::PROTOCOL,
            CloseReason::FrameTooLarge { .. } => close_code::TOO_BIG,
            // A peer that is gone or silent gets no close frame.
            CloseReason::Peer { .. } | CloseReason::Io(_) | CloseReason::PingTimeout(_) => return,
        };
        let text = match reason {
            CloseReason::Local(r) => r.clone(),
            other => other.to_string(),
        };
        let message = WsMsg::Close(Some((code, truncate_reason(&text))));
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            if self.sink.send(message).await.is_ok() {
                while let Some(Ok(_)) = self.stream.next().await {}
            }
        })
        .await;
    }
}

/// A close frame's reason is at most 123 bytes of UTF-8.
fn truncate_reason(reason: &str) -> String {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason.to_owned();
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::truncate_reason;

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(truncate_reason("short"), "short");
        let long = "é".repeat(100);
        let t = truncate_reason(&long);
        assert!(t.len() <= 123);
        assert!(long.starts_with(&t));
    }
}
