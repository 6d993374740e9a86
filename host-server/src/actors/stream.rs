//! One actor per outsourced socket: it owns the host.sock stream and runs its session
//! (`crate::session`) to the end; a listen request hands over to a [`ListenerActor`].

use actix::prelude::*;

use crate::actors::listener::ListenerActor;
use crate::handle::Shared;
use crate::session::{self, Next};

/// The actor.
#[derive(Debug)]
pub struct StreamActor {
    stream: Option<std::os::unix::net::UnixStream>,
    shared: Shared,
}

impl StreamActor {
    #[must_use]
    pub(crate) fn new(stream: std::os::unix::net::UnixStream, shared: Shared) -> Self {
        Self {
            stream: Some(stream),
            shared,
        }
    }
}

impl Actor for StreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(std) = self.stream.take() else {
            ctx.stop();
            return;
        };
        let shared = self.shared.clone();
        let run = async move {
            match tokio::net::UnixStream::from_std(std) {
                Ok(s) => session::serve(s, shared).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register a host.sock stream");
                    Next::Closed
                }
            }
        };
        ctx.spawn(run.into_actor(self).map(|next, _, ctx| {
            if let Next::Listen(parts) = next {
                ListenerActor::new(*parts).start();
            }
            ctx.stop();
        }));
    }
}
