//! A connection's byte stream with its deadlines: the header and idle
//! timeouts, kept with one timer per connection.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use super::*;

/// A connection's IO that holds the client to two deadlines:
///
/// - a request head (line and headers) must arrive within `header` of its
///   first byte, and the first one within `header` of the connection;
/// - a connection with nothing read or written for `idle` is closed (an idle
///   keep-alive connection, or a client that stopped mid-request). A
///   response being written counts as activity.
///
/// Reads and writes only stamp times; one timer per connection is moved
/// when it fires (at least every `header`), so a busy connection costs no
/// timer registration per request or per read.
pub(super) struct ConnectionIo<T> {
    pub(super) io: T,
    pub(super) idle: Duration,
    pub(super) header: Duration,
    pub(super) exchange: Arc<Exchange>,
    pub(super) last_active: tokio::time::Instant,
    /// When the request head being read started, and the count of heads
    /// read before it.
    pub(super) head: Option<(tokio::time::Instant, u64)>,
    pub(super) deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<T> ConnectionIo<T> {
    pub(super) fn new(io: T, limits: &ConnectionLimits, exchange: Arc<Exchange>) -> Self {
        let (idle, header) = (limits.keep_alive_idle, limits.header_read_timeout);
        let now = tokio::time::Instant::now();
        Self {
            io,
            idle,
            header,
            exchange,
            last_active: now,
            head: Some((now, 0)),
            deadline: Box::pin(tokio::time::sleep_until(now + idle.min(header))),
        }
    }

    pub(super) fn active(&mut self) {
        self.last_active = tokio::time::Instant::now();
    }

    /// Bytes arrived: unless they are a request's body, a head is being
    /// read, started now if no head was under way.
    pub(super) fn read_some(&mut self) {
        self.active();
        let heads = self.exchange.heads.load(Ordering::Relaxed);
        let under_way = self.head.is_some_and(|(_, before)| before == heads);
        if !under_way && !self.exchange.in_request.load(Ordering::Relaxed) {
            self.head = Some((self.last_active, heads));
        }
    }

    /// An error once a deadline passed.
    pub(super) fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        loop {
            std::task::ready!(self.deadline.as_mut().poll(cx));
            let now = tokio::time::Instant::now();
            if let Some((started, before)) = self.head {
                if self.exchange.heads.load(Ordering::Relaxed) != before {
                    // That head was read in time.
                    self.head = None;
                } else if started + self.header <= now {
                    return Poll::Ready(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request head not received in time",
                    ));
                }
            }
            let idle_due = self.last_active + self.idle;
            if idle_due <= now {
                return Poll::Ready(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection"));
            }
            // Never later than `header` from now: a head that starts before
            // the timer fires again is then caught in time.
            let head_due = self.head.map_or(now + self.header, |(started, _)| started + self.header);
            self.deadline.as_mut().reset(idle_due.min(head_due).min(now + self.header));
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for ConnectionIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                self.read_some();
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_deadlines(cx).map(Err),
        }
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for ConnectionIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        if result.is_ready() {
            self.active();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if result.is_ready() {
            self.active();
        }
        result
    }
}
