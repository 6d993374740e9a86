//! The acceptors: one per worker arbiter, each accepting on its own duplicate of host.sock's
//! listening descriptor and starting a [`StreamActor`] for every stream it wins on its own
//! arbiter. A connect is then served start to finish on the thread that accepted it: no
//! hand-off to another thread (each one costs a wake-up, tens of microseconds on an idle vCPU)
//! between the guest's connect and its answer. All acceptors see a new stream; one wins the
//! accept, the others get `EAGAIN` and wait again. On drain they stop accepting and the socket
//! file goes away.
//!
//! When an accept fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)
//! the pending connection stays queued and the listener stays readable, so retrying at once
//! would spin: the acceptor sleeps instead, 5 ms doubling up to 1 s while the failures go on
//! ([`Backoff`]), logs at most a few lines a second and counts each failure
//! (`outsock_host_accept_errors_total`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::prelude::*;
use tokio::net::{UnixListener, UnixStream};

use crate::actors::stream::StreamActor;
use crate::context::Shared;
use crate::metrics::Event;
use crate::ratelimit::LogLimit;

/// The first pause after an accept failed for want of resources.
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
/// The longest pause.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Whether an accept error means the process or system is out of descriptors or memory: the
/// connection stays queued, so the next accept would fail the same way at once.
#[must_use]
pub fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The growing pause between accepts that keep failing for want of resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    /// The pause after one more failure (5 ms, 10 ms, … up to 1 s).
    pub fn failed(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    /// An accept worked: the next failure starts from the shortest pause again.
    pub fn succeeded(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// Stop accepting; the socket file goes away.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;

/// host.sock as a stream of accepted connections, for `ctx.add_stream`; after a failure for
/// want of resources it yields nothing until its backoff pause is over.
#[derive(Debug)]
struct Incoming {
    listener: UnixListener,
    backoff: Backoff,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for Incoming {
    type Item = io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(pause) = this.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
        }
        match this.listener.poll_accept(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok((s, _))) => {
                this.backoff.succeeded();
                Poll::Ready(Some(Ok(s)))
            }
            Poll::Ready(Err(e)) => {
                if out_of_resources(&e) {
                    let d = this.backoff.failed();
                    this.pause = Some(Box::pin(tokio::time::sleep(d)));
                }
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

/// The actor.
#[derive(Debug)]
pub struct Acceptor {
    listener: Option<std::os::unix::net::UnixListener>,
    shared: Shared,
    handle: Option<SpawnHandle>,
}

impl Acceptor {
    /// An acceptor for `listener` (this worker's duplicate of host.sock); start it on its
    /// worker arbiter.
    #[must_use]
    pub(crate) fn new(listener: std::os::unix::net::UnixListener, shared: Shared) -> Self {
        Self {
            listener: Some(listener),
            shared,
            handle: None,
        }
    }
}

impl Actor for Acceptor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(std) = self.listener.take() else {
            return;
        };
        match UnixListener::from_std(std) {
            Ok(listener) => {
                self.handle = Some(ctx.add_stream(Incoming {
                    listener,
                    backoff: Backoff::default(),
                    pause: None,
                }));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot register host.sock");
                ctx.stop();
            }
        }
    }
}

impl StreamHandler<io::Result<UnixStream>> for Acceptor {
    fn handle(&mut self, item: io::Result<UnixStream>, _: &mut Context<Self>) {
        match item {
            // On this arbiter: the stream stays registered with the runtime that accepted it.
            Ok(stream) => {
                StreamActor::new(stream, self.shared.clone()).start();
            }
            // EAGAIN never gets here (the accept future waits for the next stream); EMFILE and
            // friends: `Incoming` pauses before the next try, when descriptors may be free.
            Err(e) => {
                let why = if out_of_resources(&e) {
                    "descriptors"
                } else {
                    "other"
                };
                self.shared.metrics.record(Event::AcceptFailed(why));
                static LOG: LogLimit = LogLimit::new();
                if LOG.allow() {
                    tracing::warn!(error = %e, "accept on host.sock failed");
                }
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // An accept stream never ends by itself; only Drain stops it.
    }
}

impl Handler<Drain> for Acceptor {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        if let Some(h) = self.handle.take() {
            ctx.cancel_future(h);
        }
        // Every acceptor removes it; the first one does, the others find it gone.
        let _ = std::fs::remove_file(&self.shared.settings.socket);
        tracing::debug!("stopped accepting on host.sock");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<u128> = (0..10).map(|_| b.failed().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(5));
    }

    #[test]
    fn only_resource_errors_back_off() {
        assert!(out_of_resources(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(out_of_resources(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!out_of_resources(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    /// After a failure the stream yields nothing until its pause is over, even with a
    /// connection waiting.
    #[tokio::test]
    async fn incoming_waits_out_its_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut inc = Incoming {
            listener: UnixListener::bind(&path).unwrap(),
            backoff: Backoff::default(),
            pause: Some(Box::pin(tokio::time::sleep(Duration::from_millis(50)))),
        };
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let start = std::time::Instant::now();
        let next = std::future::poll_fn(|cx| Pin::new(&mut inc).poll_next(cx)).await;
        assert!(matches!(next, Some(Ok(_))));
        assert!(start.elapsed() >= Duration::from_millis(45));
    }
}
