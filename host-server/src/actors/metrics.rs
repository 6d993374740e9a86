//! The metrics actor: owns the counters; other actors record events with `try_send` (a full
//! mailbox drops a count rather than slowing the data path), and the HTTP endpoint asks it to
//! render.

use actix::prelude::*;

use crate::limits::Limits;
use crate::metrics::{Event, Metrics};

/// Count one event.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Record(pub Event);

/// The Prometheus text of every counter and gauge.
#[derive(Debug, Message)]
#[rtype(result = "String")]
pub struct Render;

/// The actor.
#[derive(Debug)]
pub struct MetricsActor {
    metrics: Metrics,
    limits: Limits,
}

impl MetricsActor {
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            metrics: Metrics::default(),
            limits,
        }
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Bursts of events (1,000 connections closing at once) must not be dropped lightly.
        ctx.set_mailbox_capacity(65_536);
    }
}

impl Handler<Record> for MetricsActor {
    type Result = ();

    fn handle(&mut self, Record(e): Record, _: &mut Context<Self>) {
        self.metrics.record(e);
    }
}

impl Handler<Render> for MetricsActor {
    type Result = String;

    fn handle(&mut self, _: Render, _: &mut Context<Self>) -> String {
        let open = self.limits.total_sockets();
        self.metrics.render(&[("open_sockets", open)])
    }
}
