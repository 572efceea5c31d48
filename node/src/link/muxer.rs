//! A QUIC connection as a libp2p `StreamMuxer`: every libp2p protocol (identify, ping, kad,
//! charter sync…) gets its own bidirectional QUIC stream, so one slow protocol never blocks another.

use super::LinkError;
use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

type OpenFuture =
    BoxFuture<'static, Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>>;

/// See the module documentation.
pub struct QuicMuxer {
    connection: quinn::Connection,
    inbound: Option<OpenFuture>,
    outbound: Option<OpenFuture>,
    closing: Option<BoxFuture<'static, quinn::ConnectionError>>,
}

impl QuicMuxer {
    pub(crate) fn new(connection: quinn::Connection) -> Self {
        Self {
            connection,
            inbound: None,
            outbound: None,
            closing: None,
        }
    }

    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }
}

/// One bidirectional QUIC stream.
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl StreamMuxer for QuicMuxer {
    type Substream = QuicStream;
    type Error = LinkError;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let connection = self.connection.clone();
        let future = self
            .inbound
            .get_or_insert_with(|| async move { connection.accept_bi().await }.boxed());
        let result = futures::ready!(future.poll_unpin(cx));
        self.inbound = None;
        let (send, recv) = result.map_err(LinkError::Connection)?;
        Poll::Ready(Ok(QuicStream { send, recv }))
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let connection = self.connection.clone();
        let future = self
            .outbound
            .get_or_insert_with(|| async move { connection.open_bi().await }.boxed());
        let result = futures::ready!(future.poll_unpin(cx));
        self.outbound = None;
        let (send, recv) = result.map_err(LinkError::Connection)?;
        Poll::Ready(Ok(QuicStream { send, recv }))
    }

    fn poll(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        // Address changes are reported by `Links` as `LinkEvent::Migrated`.
        Poll::Pending
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let connection = self.connection.clone();
        let future = self.closing.get_or_insert_with(|| {
            connection.close(super::links::VARINT_NORMAL, b"closed");
            async move { connection.closed().await }.boxed()
        });
        match futures::ready!(future.poll_unpin(cx)) {
            quinn::ConnectionError::LocallyClosed
            | quinn::ConnectionError::ApplicationClosed(_) => Poll::Ready(Ok(())),
            e => Poll::Ready(Err(LinkError::Connection(e))),
        }
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_close(Pin::new(&mut self.send), cx)
    }
}
