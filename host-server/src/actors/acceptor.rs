//! The acceptors: one per worker arbiter, each accepting on its own duplicate of host.sock's
//! listening descriptor and starting a [`StreamActor`] for every stream it wins on its own
//! arbiter. A connect is then served start to finish on the thread that accepted it: no
//! hand-off to another thread (each one costs a wake-up, tens of microseconds on an idle vCPU)
//! between the guest's connect and its answer. All acceptors see a new stream; one wins the
//! accept, the others get `EAGAIN` and wait again. On drain they stop accepting and the socket
//! file goes away.

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use actix::prelude::*;
use tokio::net::{UnixListener, UnixStream};

use crate::actors::stream::StreamActor;
use crate::context::Shared;

/// Stop accepting; the socket file goes away.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;

/// host.sock as a stream of accepted connections, for `ctx.add_stream`.
#[derive(Debug)]
struct Incoming(UnixListener);

impl Stream for Incoming {
    type Item = io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_accept(cx).map(|r| Some(r.map(|(s, _)| s)))
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
            Ok(l) => self.handle = Some(ctx.add_stream(Incoming(l))),
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
            // friends: the next accept may work once descriptors are freed.
            Err(e) => tracing::warn!(error = %e, "accept on host.sock failed"),
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
