//! One actor per outsourced socket: it owns the host.sock stream and runs its session
//! (`crate::session`) to the end; a listen request hands over to a [`ListenerActor`].

use actix::prelude::*;

use crate::actors::listener::ListenerActor;
use crate::context::Shared;
use crate::session::{self, Next};

/// The actor.
#[derive(Debug)]
pub struct StreamActor {
    stream: Option<tokio::net::UnixStream>,
    shared: Shared,
}

impl StreamActor {
    #[must_use]
    /// `stream` must belong to the runtime of the arbiter the actor starts on.
    pub(crate) fn new(stream: tokio::net::UnixStream, shared: Shared) -> Self {
        Self {
            stream: Some(stream),
            shared,
        }
    }
}

impl Actor for StreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(stream) = self.stream.take() else {
            ctx.stop();
            return;
        };
        let shared = self.shared.clone();
        let run = session::serve(stream, shared);
        ctx.spawn(run.into_actor(self).map(|next, _, ctx| {
            if let Next::Listen(parts) = next {
                ListenerActor::new(*parts).start();
            }
            ctx.stop();
        }));
    }
}
