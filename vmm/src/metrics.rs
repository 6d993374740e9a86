//! The VMM's counters, in Prometheus text on a local socket of the VM's own
//! (`metrics_socket`, e.g. `/run/outsock/vm-NAME.metrics`; off by default), as the daemons
//! serve theirs over HTTP: `curl --unix-socket /run/outsock/vm-vm0.metrics http://vm/metrics`.
//!
//! One VMM process runs one VM, so the counters are one process-wide [`METRICS`] of relaxed
//! atomics that the vCPU threads and the event loop bump where things happen: vCPU exits by
//! kind, vsock connections opened by the guest and by host processes, bytes each way, host
//! streams refused at the VM's socket, guest listeners and UDP servers registered again with
//! host-server after it went away (and those it refused then). [`MetricsServer`] answers on the event loop's thread
//! (no thread or system call of its own beyond what that thread's seccomp list already
//! allows: `accept4`, `recvfrom`, `sendto`, `close`): each accepted stream gets the whole text
//! in one HTTP/1.0 response and is closed; what the client sent is read (at most 4 KiB, never
//! waited for) and ignored. At most [`ACCEPTS_PER_EVENT`] clients are answered per wake-up,
//! so a flood of scrapers cannot hold the guest's devices back.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

/// Kinds of vCPU exit counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    /// Interrupted (a signal, KVM's immediate exit): the vCPU went straight back in.
    Intr,
    /// Everything else (the VM ends with it).
    Other,
}

const EXITS: [(Exit, &str); 6] = [
    (Exit::IoIn, "io_in"),
    (Exit::IoOut, "io_out"),
    (Exit::MmioRead, "mmio_read"),
    (Exit::MmioWrite, "mmio_write"),
    (Exit::Intr, "intr"),
    (Exit::Other, "other"),
];

/// The counters (see the module documentation).
#[derive(Debug)]
pub struct Metrics {
    exits: [AtomicU64; 6],
    /// Guest-initiated vsock connections (to host-server), host-initiated ones (CONNECT on the
    /// VM's socket, accepted by the guest).
    pub vsock_guest_connections: AtomicU64,
    pub vsock_host_connections: AtomicU64,
    /// Guest bytes written to the host side, host bytes delivered to the guest.
    pub vsock_tx_bytes: AtomicU64,
    pub vsock_rx_bytes: AtomicU64,
    /// Sockets host-server passed to the VMM for a connection's data path.
    pub passed_sockets: AtomicU64,
    /// Guest connects that went to host-server on a kept host.sock stream (no new stream).
    pub kept_streams_reused: AtomicU64,
    /// The size the guest's driver last gave the vsock RX queue (a gauge; 0 until it first
    /// activates the device; kept across a reset, which a guest's shutdown may do before the
    /// last scrape): Linux posts an RX buffer per two descriptors, until the queue is full.
    pub vsock_rx_queue_size: AtomicU64,
    /// Peers refused at the VM's socket (SO_PEERCRED not admitted).
    pub refused_peers: AtomicU64,
    /// Guest listeners and UDP servers registered with host-server again after it went away,
    /// and those it refused then (see the vsock muxer's docs), by [`REREGISTERED`]'s kinds and
    /// outcomes.
    reregistrations: [[AtomicU64; 2]; 2],
}

/// The kinds of companion registered again (the row of a re-registration counter), and the
/// outcomes (the column).
const REREGISTERED: ([&str; 2], [&str; 2]) =
    (["listener", "udp_server"], ["registered", "refused"]);

impl Metrics {
    #[allow(clippy::declare_interior_mutable_const)]
    const ZERO: AtomicU64 = AtomicU64::new(0);

    const fn new() -> Self {
        Self {
            exits: [Self::ZERO; 6],
            vsock_guest_connections: Self::ZERO,
            vsock_host_connections: Self::ZERO,
            vsock_tx_bytes: Self::ZERO,
            vsock_rx_bytes: Self::ZERO,
            passed_sockets: Self::ZERO,
            kept_streams_reused: Self::ZERO,
            vsock_rx_queue_size: Self::ZERO,
            refused_peers: Self::ZERO,
            reregistrations: [[Self::ZERO; 2], [Self::ZERO; 2]],
        }
    }

    /// Counts one re-registration of a guest listener (or, `udp_server`, a UDP server's
    /// association) that host-server took (or, `refused`, refused).
    pub fn reregistered(&self, udp_server: bool, refused: bool) {
        self.reregistrations[usize::from(udp_server)][usize::from(refused)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one vCPU exit.
    pub fn exit(&self, kind: Exit) {
        let i = EXITS.iter().position(|(k, _)| *k == kind).unwrap_or(5);
        self.exits[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition of every counter, labelled with the VM's name; `open` is
    /// the vsock connections open now (a gauge the muxer knows).
    #[must_use]
    pub fn render(&self, vm: &str, open: Option<u64>) -> String {
        use std::fmt::Write as _;
        let vm = vm.replace('\\', "\\\\").replace('"', "\\\"");
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut o = String::with_capacity(2048);
        // One metric family: its help, its type (counter or gauge) and its labelled rows.
        let mut family = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
            let _ = writeln!(o, "# HELP outsock_vmm_{name} {help}");
            let _ = writeln!(o, "# TYPE outsock_vmm_{name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(o, "outsock_vmm_{name}{{vm=\"{vm}\"{labels}}} {v}");
            }
        };
        let exits: Vec<(String, u64)> = EXITS
            .iter()
            .zip(&self.exits)
            .map(|((_, label), c)| (format!(",kind=\"{label}\""), get(c)))
            .collect();
        family(
            "exits_total",
            "counter",
            "vCPU exits to the VMM, by kind.",
            &exits,
        );
        family(
            "vsock_connections_total",
            "counter",
            "vsock connections opened, by who opened them.",
            &[
                (",by=\"guest\"".into(), get(&self.vsock_guest_connections)),
                (",by=\"host\"".into(), get(&self.vsock_host_connections)),
            ],
        );
        family(
            "vsock_bytes_total",
            "counter",
            "vsock stream bytes: tx from the guest to the host side, rx to the guest.",
            &[
                (",dir=\"tx\"".into(), get(&self.vsock_tx_bytes)),
                (",dir=\"rx\"".into(), get(&self.vsock_rx_bytes)),
            ],
        );
        family(
            "passed_sockets_total",
            "counter",
            "Sockets host-server passed to the VMM for a connection's data path.",
            &[(String::new(), get(&self.passed_sockets))],
        );
        family(
            "kept_streams_reused_total",
            "counter",
            "Guest connects sent to host-server on a host.sock stream kept from an ended connection.",
            &[(String::new(), get(&self.kept_streams_reused))],
        );
        family(
            "refused_peers_total",
            "counter",
            "Streams refused at the VM's socket (SO_PEERCRED not admitted).",
            &[(String::new(), get(&self.refused_peers))],
        );
        let (kinds, outcomes) = REREGISTERED;
        let rows: Vec<(String, u64)> = kinds
            .iter()
            .zip(&self.reregistrations)
            .flat_map(|(kind, row)| {
                outcomes.iter().zip(row).map(move |(outcome, c)| {
                    (format!(",kind=\"{kind}\",outcome=\"{outcome}\""), get(c))
                })
            })
            .collect();
        family(
            "reregistrations_total",
            "counter",
            "Guest listeners and UDP servers registered with host-server again after it went \
             away, by kind and outcome.",
            &rows,
        );
        family(
            "vsock_rx_queue_size",
            "gauge",
            "The vsock RX queue's size as the guest's driver last set it.",
            &[(String::new(), get(&self.vsock_rx_queue_size))],
        );
        if let Some(open) = open {
            family(
                "vsock_connections_open",
                "gauge",
                "vsock connections open now.",
                &[(String::new(), open)],
            );
        }
        o
    }
}

/// The VMM's counters.
pub static METRICS: Metrics = Metrics::new();

/// Clients answered per wake-up at most.
pub const ACCEPTS_PER_EVENT: usize = 16;

/// Answers scrapes on the VM's metrics socket (see the module documentation).
pub struct MetricsServer {
    listener: UnixListener,
    vm: String,
    /// The vsock connections open now, when the VM has a vsock device.
    open: Option<Box<dyn Fn() -> u64 + Send>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("listener", &self.listener)
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Serves on `listener` (made non-blocking here), labelling with `vm`.
    ///
    /// # Errors
    /// When the listener cannot be made non-blocking.
    pub fn new(
        listener: UnixListener,
        vm: String,
        open: Option<Box<dyn Fn() -> u64 + Send>>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self { listener, vm, open })
    }

    fn answer(&self, mut s: std::os::unix::net::UnixStream) {
        // Never wait for the client: a scraper that says nothing still gets its answer.
        if s.set_nonblocking(true).is_err() {
            return;
        }
        let mut request = [0u8; 4096];
        let _ = s.read(&mut request);
        let body = METRICS.render(&self.vm, self.open.as_ref().map(|f| f()));
        let response = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // A few KiB into an empty socket buffer: one write. A client that left loses it.
        let _ = s.write_all(response.as_bytes());
    }
}

impl MutEventSubscriber for MetricsServer {
    fn init(&mut self, ops: &mut EventOps) {
        if ops.add(Events::new(&self.listener, EventSet::IN)).is_err() {
            eprintln!("outsock-vmm[{}]: cannot watch the metrics socket", self.vm);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.listener.as_raw_fd() {
            return;
        }
        for _ in 0..ACCEPTS_PER_EVENT {
            match self.listener.accept() {
                Ok((s, _)) => self.answer(s),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn renders_every_counter_labelled_with_the_vm() {
        let m = Metrics::new();
        m.exit(Exit::IoOut);
        m.exit(Exit::IoOut);
        m.exit(Exit::MmioWrite);
        Metrics::add(&m.vsock_tx_bytes, 1500);
        Metrics::add(&m.vsock_guest_connections, 2);
        m.vsock_rx_queue_size.store(1024, Ordering::Relaxed);
        let text = m.render("web\"1", Some(3));
        for line in [
            "outsock_vmm_exits_total{vm=\"web\\\"1\",kind=\"io_out\"} 2\n",
            "outsock_vmm_exits_total{vm=\"web\\\"1\",kind=\"mmio_write\"} 1\n",
            "outsock_vmm_exits_total{vm=\"web\\\"1\",kind=\"io_in\"} 0\n",
            "outsock_vmm_vsock_bytes_total{vm=\"web\\\"1\",dir=\"tx\"} 1500\n",
            "outsock_vmm_vsock_connections_total{vm=\"web\\\"1\",by=\"guest\"} 2\n",
            "outsock_vmm_passed_sockets_total{vm=\"web\\\"1\"} 0\n",
            "outsock_vmm_kept_streams_reused_total{vm=\"web\\\"1\"} 0\n",
            "outsock_vmm_vsock_connections_open{vm=\"web\\\"1\"} 3\n",
            "outsock_vmm_vsock_rx_queue_size{vm=\"web\\\"1\"} 1024\n",
            "# TYPE outsock_vmm_vsock_rx_queue_size gauge\n",
            "# TYPE outsock_vmm_exits_total counter\n",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(!m.render("x", None).contains("connections_open"));
    }

    /// A real Unix socket and the event manager: a scraper gets the text, one that sends
    /// nothing too, and the server never blocks on either.
    #[test]
    fn answers_scrapes_on_a_unix_socket() {
        use event_manager::{EventManager, SubscriberOps};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.metrics");
        let server = MetricsServer::new(
            UnixListener::bind(&path).unwrap(),
            "vm0".into(),
            Some(Box::new(|| 7)),
        )
        .unwrap();
        let mut em = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
        em.add_subscriber(Box::new(server));
        METRICS.exit(Exit::IoIn);
        let mut asker = std::os::unix::net::UnixStream::connect(&path).unwrap();
        asker.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let silent = std::os::unix::net::UnixStream::connect(&path).unwrap();
        em.run_with_timeout(1000).unwrap();
        for mut s in [asker, silent] {
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
            assert!(
                text.contains("outsock_vmm_vsock_connections_open{vm=\"vm0\"} 7\n"),
                "{text}"
            );
            assert!(text.contains("kind=\"io_in\"}"), "{text}");
        }
    }
}
