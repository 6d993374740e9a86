//! One actor per guest listener: owns the IPv6 listening socket and its control (a process's
//! packet channel, a VM's listen stream), and runs the accept loop (`crate::inbound::run`) until
//! the guest closes it or the server drains.

use actix::prelude::*;

use crate::inbound::{self, ListenerParts};

/// The actor.
#[derive(Debug)]
pub struct ListenerActor {
    parts: Option<ListenerParts>,
}

impl ListenerActor {
    #[must_use]
    pub(crate) fn new(parts: ListenerParts) -> Self {
        Self { parts: Some(parts) }
    }
}

impl Actor for ListenerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(parts) = self.parts.take() else {
            ctx.stop();
            return;
        };
        ctx.spawn(
            inbound::run(parts)
                .into_actor(self)
                .map(|(), _, ctx| ctx.stop()),
        );
    }
}
