//! Version 2's byte stream: the WebSocket's binary messages read and written as
//! one ordered stream of bytes ([`WsIo`], `AsyncRead + AsyncWrite`), on which
//! HTTP/2 runs.
//!
//! The connection loop ([`super::link::drive`]) owns the socket. Incoming
//! binary messages reach [`WsIo`] through a bounded channel (a full channel
//! holds back reading from the socket). Writes are gathered into one buffer and
//! become one binary message when HTTP/2 flushes (it does when it has nothing
//! more to write) or when the buffer reaches [`MESSAGE_BYTES`]; the loop writes
//! queued messages back to back and flushes the socket when its queue is empty.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::link::{FrameResult, Inbound, WsMsg};

/// Largest binary message this end sends in version 2 (the receiver accepts up
/// to its frame limit).
pub(crate) const MESSAGE_BYTES: usize = 64 * 1024;

/// Messages queued between the byte stream and the connection loop, each way.
/// With [`MESSAGE_BYTES`] this bounds the bytes in transit inside one end.
pub(crate) const QUEUE: usize = 8;

/// The byte stream HTTP/2 reads and writes.
pub(crate) struct WsIo {
    inbound: mpsc::Receiver<Bytes>,
    current: Bytes,
    outbound: PollSender<WsMsg>,
    pending: BytesMut,
}

/// The connection loop's side of [`WsIo`]'s inbound channel.
pub(crate) struct ToStream(mpsc::Sender<Bytes>);

impl Inbound for ToStream {
    async fn binary(&mut self, data: Bytes) -> FrameResult {
        // A closed receiver means HTTP/2 is done with the connection; the
        // session ends through its own path, so the bytes are simply dropped.
        let _ = self.0.send(data).await;
        Ok(())
    }
}

/// A byte stream over a connection loop's queues: `(stream, its inbound
/// sender for the loop, the loop's outbound receiver)`.
pub(crate) fn pair() -> (WsIo, ToStream, mpsc::Receiver<WsMsg>) {
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let io = WsIo {
        inbound: in_rx,
        current: Bytes::new(),
        outbound: PollSender::new(out_tx),
        pending: BytesMut::new(),
    };
    (io, ToStream(in_tx), out_rx)
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the tunnel connection closed")
}

impl WsIo {
    /// Hands the gathered bytes to the connection loop as one message.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.outbound.poll_reserve(cx)).map_err(|_| gone())?;
        let message = WsMsg::Binary(self.pending.split().freeze());
        self.outbound.send_item(message).map_err(|_| gone())?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.current.is_empty() {
            match ready!(self.inbound.poll_recv(cx)) {
                Some(b) => self.current = b,
                // The loop ended: end of stream.
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.len() >= MESSAGE_BYTES {
            ready!(self.poll_send_pending(cx))?;
        }
        let n = buf.len().min(MESSAGE_BYTES - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send_pending(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_send_pending(cx))?;
        self.outbound.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn writes_become_one_message_per_flush_and_reads_span_messages() {
        let (mut io, mut to_stream, mut out) = pair();
        io.write_all(b"hello ").await.unwrap();
        io.write_all(b"world").await.unwrap();
        assert!(out.try_recv().is_err(), "nothing is sent before a flush");
        io.flush().await.unwrap();
        match out.recv().await.unwrap() {
            WsMsg::Binary(b) => assert_eq!(&b[..], b"hello world"),
            other => panic!("unexpected {other:?}"),
        }

        let big = vec![7u8; MESSAGE_BYTES + 10];
        io.write_all(&big).await.unwrap();
        io.flush().await.unwrap();
        let mut sizes = Vec::new();
        while let Ok(WsMsg::Binary(b)) = out.try_recv() {
            sizes.push(b.len());
        }
        assert_eq!(sizes, vec![MESSAGE_BYTES, 10]);

        to_stream.binary(Bytes::from_static(b"ab")).await.unwrap();
        to_stream.binary(Bytes::from_static(b"cde")).await.unwrap();
        drop(to_stream);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abcde");
    }

    #[tokio::test]
    async fn a_closed_loop_is_a_broken_pipe() {
        let (mut io, _to_stream, out) = pair();
        drop(out);
        io.write_all(b"x").await.unwrap();
        let e = io.flush().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
