//! The HTTP servers' connection stream, which a handler can reset on
//! purpose (the `reset` fault): each connection carries a flag the
//! handler sets through [`ConnHandle`]; the next read or write on that
//! connection sets `SO_LINGER` to zero and fails, so hyper drops it and the
//! kernel answers with a TCP RST instead of a response.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(crate) struct ResettableIo {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

/// Per-connection handle, available to handlers as `ConnectInfo<ConnHandle>`.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle {
    reset: Arc<AtomicBool>,
}

impl ConnHandle {
    /// Makes the connection end with a TCP reset at its next read or write.
    pub(crate) fn reset(&self) {
        self.reset.store(true, Ordering::Release);
    }
}

impl ResettableIo {
    /// Wraps an accepted stream; the handle goes to its requests.
    pub(crate) fn new(stream: TcpStream) -> (Self, ConnHandle) {
        let reset = Arc::new(AtomicBool::new(false));
        let handle = ConnHandle {
            reset: reset.clone(),
        };
        (Self { stream, reset }, handle)
    }

    fn check(&self) -> io::Result<()> {
        if self.reset.load(Ordering::Acquire) {
            let _ = self.stream.set_zero_linger();
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection reset by a stub's fault",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for ResettableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
