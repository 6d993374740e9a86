//! The acceptor: owns host.sock, starts one [`StreamActor`] per accepted stream on the worker
//! arbiters in turn, and stops accepting (removing the socket file) when told to drain.

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use actix::prelude::*;
use tokio::net::{UnixListener, UnixStream};

use crate::actors::stream::StreamActor;
use crate::handle::Shared;

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
    workers: Vec<ArbiterHandle>,
    next: usize,
    shared: Shared,
    handle: Option<SpawnHandle>,
}

impl Acceptor {
    #[must_use]
    pub(crate) fn new(
        listener: std::os::unix::net::UnixListener,
        workers: Vec<ArbiterHandle>,
        shared: Shared,
    ) -> Self {
        Self {
            listener: Some(listener),
            workers,
            next: 0,
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
        let stream = match item.and_then(UnixStream::into_std) {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: the next accept may work once descriptors are freed.
                tracing::warn!(error = %e, "accept on host.sock failed");
                return;
            }
        };
        let worker = &self.workers[self.next % self.workers.len()];
        self.next = self.next.wrapping_add(1);
        let shared = self.shared.clone();
        // The stream moves as a std socket: a tokio socket belongs to the runtime that
        // registered it, and each arbiter runs its own.
        StreamActor::start_in_arbiter(worker, move |_| StreamActor::new(stream, shared));
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
        let _ = std::fs::remove_file(&self.shared.settings.socket);
        tracing::info!("stopped accepting on host.sock");
    }
}
