//! The channel framing shared by exec and port-forward: every binary frame is
//! a channel byte and its payload; one task owns the sending half so that
//! readers of several sources never block each other.

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Frames queued towards the client; small, so a slow client slows the sources.
const QUEUE: usize = 16;

/// A binary frame on `channel`.
pub(crate) fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut out = Vec::with_capacity(payload.len() + 1);
    out.push(channel);
    out.extend_from_slice(payload);
    Message::Binary(Bytes::from(out))
}

/// The sending side: a queue drained by a task into the socket, which closes
/// the WebSocket once every sender is dropped.
pub(crate) struct Outgoing {
    pub tx: mpsc::Sender<Message>,
    pub task: JoinHandle<()>,
}

/// Splits a socket into its incoming frames and a queued sender.
pub(crate) fn split(ws: WebSocket) -> (SplitStream<WebSocket>, Outgoing) {
    let (sink, incoming) = ws.split();
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = tokio::spawn(drain(rx, sink));
    (incoming, Outgoing { tx, task })
}

async fn drain(mut rx: mpsc::Receiver<Message>, mut sink: SplitSink<WebSocket, Message>) {
    while let Some(msg) = rx.recv().await {
        // Write what is queued, then flush once the queue is empty (never
        // per frame, never on a timer).
        let mut next = Some(msg);
        while let Some(msg) = next {
            if sink.feed(msg).await.is_err() {
                // The client went away; the sources notice when their sends fail.
                return;
            }
            next = rx.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    // A normal closure with its code: client-go reports a close without
    // one (1005) as an error.
    let close = CloseFrame {
        code: close_code::NORMAL,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(close))).await;
    let _ = sink.close().await;
}

/// The payload of a binary frame as (channel, data); `None` for anything else.
pub(crate) fn channel_of(msg: &Message) -> Option<(u8, &[u8])> {
    match msg {
        Message::Binary(b) => b.split_first().map(|(c, rest)| (*c, rest)),
        _ => None,
    }
}
