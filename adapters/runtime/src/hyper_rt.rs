//! hyper's runtime traits on any [`Runtime`]: a timer, an executor, and an I/O wrapper for
//! `futures-io` streams (async-std, smol), so hyper's server and client run wherever core does.
//!
//! tokio has its own (`hyper_util::rt`); these serve every other runtime, written without
//! `unsafe`: [`FuturesIo`] reads into a small buffer and copies into hyper's cursor, which costs
//! one copy per read and nothing else.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::io::{AsyncRead, AsyncWrite};

use crate::Runtime;

/// `R`'s timer as hyper's [`Timer`](hyper::rt::Timer) (header-read timeouts, HTTP/2 keep-alive).
#[derive(Clone, Debug, Default)]
pub struct RuntimeTimer<R>(pub R);

/// A sleep of `R`'s made `Sync`, as hyper requires: only `poll` touches it, through `&mut`.
struct Sleep(Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut().0.get_mut() {
            Ok(sleep) => sleep.as_mut().poll(cx),
            // A poisoned sleep has panicked in `poll` before; treat it as elapsed.
            Err(_) => Poll::Ready(()),
        }
    }
}

impl hyper::rt::Sleep for Sleep {}

impl<R: Runtime> hyper::rt::Timer for RuntimeTimer<R> {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep(Mutex::new(Box::pin(self.0.sleep(duration)))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep(Mutex::new(Box::pin(self.0.sleep_until(deadline)))))
    }
}

/// `R`'s task spawning as hyper's [`Executor`](hyper::rt::Executor) (HTTP/2 streams, client
/// connections).
#[derive(Clone, Debug, Default)]
pub struct RuntimeExecutor<R>(pub R);

impl<R: Runtime, F> hyper::rt::Executor<F> for RuntimeExecutor<R>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(async move {
            future.await;
        });
    }
}

/// A `futures-io` stream (an async-std or smol socket, a TLS stream over one) as hyper's I/O.
#[derive(Debug)]
pub struct FuturesIo<T>(pub T);

/// The most copied per read; hyper asks for what its buffer has room for.
const READ_CHUNK: usize = 16 * 1024;

impl<T: AsyncRead + Unpin> hyper::rt::Read for FuturesIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut chunk = [0u8; READ_CHUNK];
        let room = buf.remaining().min(READ_CHUNK);
        let Some(chunk) = chunk.get_mut(..room) else {
            return Poll::Ready(Ok(()));
        };
        match Pin::new(&mut self.get_mut().0).poll_read(cx, chunk) {
            Poll::Ready(Ok(read)) => {
                buf.put_slice(chunk.get(..read).unwrap_or_default());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for FuturesIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}
