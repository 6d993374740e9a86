//! Counters and their Prometheus text rendering (the plain part of the metrics actor), and the
//! tiny HTTP endpoint that serves them on the configured local address.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

/// Something worth counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A host.sock stream was accepted.
    StreamAccepted,
    /// A stream was refused before its request ran (identity, limits, protocol); the reason.
    StreamRefused(&'static str),
    /// An outbound connect finished: "ok" or the errno's name.
    Connect(&'static str),
    /// Bytes a relay moved when it ended.
    Relayed {
        up: u64,
        down: u64,
    },
    /// A connect handed its socket over with SCM_RIGHTS.
    FdPassed,
    /// A process's destination routed for a connect it makes itself, with this many sockets
    /// lent (`ToHost::Lend`).
    Lent(u64),
    ListenerOpened,
    /// An inbound connection was delivered to a guest.
    InboundDelivered,
    /// An inbound connection could not be delivered (no dummy, VM socket down).
    InboundDropped,
    UdpOut,
    UdpIn,
    /// A connected UDP socket was made and handed to a process.
    UdpConnected,
    /// An ICMP echo request sent for a guest (`up`) or an echo reply handed back (`down`).
    IcmpEchoOut,
    IcmpEchoIn,
    DnsQuery,
    /// A dummy was resolved from the SQLite file because dns-cache was down.
    LookupFallback,
    /// The destination policy refused an address (connect, send, or a reply's source); the
    /// reason (`outsock_policy::Reason::as_str`).
    RefusedDestination(&'static str),
    /// An accept on host.sock failed; `"descriptors"` (EMFILE/ENFILE/ENOBUFS/ENOMEM: the
    /// acceptor backs off) or `"other"`.
    AcceptFailed(&'static str),
}

/// Every counter, by its Prometheus series name.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: BTreeMap<String, u64>,
}

const P: &str = "outsock_host";

/// The counters, shared by every thread that records and the metrics actor that renders.
#[derive(Debug, Clone, Default)]
pub struct SharedMetrics(Arc<Mutex<Metrics>>);

impl SharedMetrics {
    /// Counts `e` (a short lock; a panicked holder leaves valid counts).
    pub fn record(&self, e: Event) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(e);
    }

    /// See [`Metrics::render`].
    #[must_use]
    pub fn render(&self, gauges: &[(&str, u64)]) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .render(gauges)
    }

    /// See [`Metrics::get`].
    #[must_use]
    pub fn get(&self, series: &str) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(series)
    }
}

impl Metrics {
    /// Counts `e`.
    pub fn record(&mut self, e: Event) {
        match e {
            Event::StreamAccepted => self.add(&format!("{P}_streams_total"), 1),
            Event::StreamRefused(why) => {
                self.add(&format!("{P}_streams_refused_total{{reason=\"{why}\"}}"), 1);
            }
            Event::Connect(result) => {
                self.add(&format!("{P}_connects_total{{result=\"{result}\"}}"), 1);
            }
            Event::Relayed { up, down } => {
                self.add(&format!("{P}_relayed_bytes_total{{direction=\"up\"}}"), up);
                self.add(
                    &format!("{P}_relayed_bytes_total{{direction=\"down\"}}"),
                    down,
                );
            }
            Event::FdPassed => self.add(&format!("{P}_fds_passed_total"), 1),
            Event::Lent(sockets) => {
                self.add(&format!("{P}_routes_lent_total"), 1);
                self.add(&format!("{P}_sockets_lent_total"), sockets);
            }
            Event::ListenerOpened => self.add(&format!("{P}_listeners_opened_total"), 1),
            Event::InboundDelivered => {
                self.add(&format!("{P}_inbound_total{{result=\"delivered\"}}"), 1);
            }
            Event::InboundDropped => {
                self.add(&format!("{P}_inbound_total{{result=\"dropped\"}}"), 1);
            }
            Event::UdpOut => self.add(&format!("{P}_udp_datagrams_total{{direction=\"up\"}}"), 1),
            Event::UdpIn => {
                self.add(&format!("{P}_udp_datagrams_total{{direction=\"down\"}}"), 1);
            }
            Event::UdpConnected => self.add(&format!("{P}_udp_connected_total"), 1),
            Event::IcmpEchoOut => {
                self.add(&format!("{P}_icmp_echo_total{{direction=\"up\"}}"), 1);
            }
            Event::IcmpEchoIn => {
                self.add(&format!("{P}_icmp_echo_total{{direction=\"down\"}}"), 1);
            }
            Event::DnsQuery => self.add(&format!("{P}_dns_queries_total"), 1),
            Event::LookupFallback => self.add(&format!("{P}_lookup_fallbacks_total"), 1),
            Event::RefusedDestination(reason) => self.add(
                &format!("{P}_refused_destinations_total{{reason=\"{reason}\"}}"),
                1,
            ),
            Event::AcceptFailed(why) => {
                self.add(&format!("{P}_accept_errors_total{{reason=\"{why}\"}}"), 1);
            }
        }
    }

    fn add(&mut self, series: &str, by: u64) {
        *self.counters.entry(series.to_owned()).or_default() += by;
    }

    /// The value of one series (tests).
    #[must_use]
    pub fn get(&self, series: &str) -> u64 {
        self.counters.get(series).copied().unwrap_or(0)
    }

    /// Prometheus text format, with `gauges` (name, value) appended.
    #[must_use]
    pub fn render(&self, gauges: &[(&str, u64)]) -> String {
        let mut out = String::new();
        let mut last_name = "";
        for (series, v) in &self.counters {
            let name = series.split('{').next().unwrap_or(series);
            if name != last_name {
                let _ = writeln!(out, "# TYPE {name} counter");
                last_name = name;
            }
            let _ = writeln!(out, "{series} {v}");
        }
        for (name, v) in gauges {
            let _ = writeln!(out, "# TYPE {P}_{name} gauge\n{P}_{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let mut m = Metrics::default();
        m.record(Event::Connect("ok"));
        m.record(Event::Connect("ok"));
        m.record(Event::Connect("ECONNREFUSED"));
        m.record(Event::Relayed { up: 10, down: 20 });
        m.record(Event::RefusedDestination("loopback"));
        let text = m.render(&[("open_sockets", 3)]);
        assert!(text.contains("# TYPE outsock_host_connects_total counter\n"));
        assert_eq!(
            text.matches("# TYPE outsock_host_connects_total").count(),
            1
        );
        assert!(text.contains("outsock_host_connects_total{result=\"ok\"} 2\n"));
        assert!(text.contains("outsock_host_connects_total{result=\"ECONNREFUSED\"} 1\n"));
        assert!(text.contains("outsock_host_relayed_bytes_total{direction=\"down\"} 20\n"));
        assert!(
            text.contains("# TYPE outsock_host_open_sockets gauge\noutsock_host_open_sockets 3\n")
        );
        assert_eq!(m.get("outsock_host_connects_total{result=\"ok\"}"), 2);
        assert!(text.contains("outsock_host_refused_destinations_total{reason=\"loopback\"} 1\n"));
    }
}
