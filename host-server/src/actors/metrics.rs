//! The metrics actor: renders the counters and gauges for the HTTP endpoint. The counters
//! themselves ([`SharedMetrics`]) are recorded in place by whichever thread sees the event,
//! under a short lock: a message per event would wake the control arbiter's thread two or
//! three times for every connect. [`MetricsHandle`] is how the rest of the crate records and
//! asks for the text.

use actix::prelude::*;

use crate::limits::Limits;
use crate::metrics::{Event, SharedMetrics};

/// The Prometheus text of every counter and gauge.
#[derive(Debug, Message)]
#[rtype(result = "String")]
pub struct Render;

/// The actor.
#[derive(Debug)]
pub struct MetricsActor {
    metrics: SharedMetrics,
    limits: Limits,
}

impl MetricsActor {
    #[must_use]
    pub fn new(metrics: SharedMetrics, limits: Limits) -> Self {
        Self { metrics, limits }
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;
}

impl Handler<Render> for MetricsActor {
    type Result = String;

    fn handle(&mut self, _: Render, _: &mut Context<Self>) -> String {
        let open = self.limits.total_sockets();
        self.metrics.render(&[("open_sockets", open)])
    }
}

/// Records events and renders the metrics text.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    addr: Addr<MetricsActor>,
    counters: SharedMetrics,
}

impl MetricsHandle {
    /// The handle of a started actor; `counters` are the ones the actor renders.
    #[must_use]
    pub(crate) fn new(addr: Addr<MetricsActor>, counters: SharedMetrics) -> Self {
        Self { addr, counters }
    }

    /// Counts `e`, on the caller's thread.
    pub fn record(&self, e: Event) {
        self.counters.record(e);
    }

    /// The Prometheus text.
    pub async fn render(&self) -> String {
        self.addr.send(Render).await.unwrap_or_default()
    }
}
