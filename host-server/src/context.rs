//! What every request handler takes: [`Shared`], the server-wide state each session gets a
//! clone of, and [`Request`], one host.sock stream whose request is known; with [`refuse`],
//! which answers an errno and closes the stream gracefully; and [`admit`], the destination
//! policy's verdict as every handler applies it (EACCES, a counter, a rate-limited log line);
//! and [`LocalTable`], where UDP servers' clients wrote to (`udp`'s, kept in [`Shared`] too).
//! They live below the handlers (`session`, `outbound`, `inbound`, `udp`) so that the handlers
//! never need to import one another for them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use outsock_policy::Policy;

use shared_proto::{Errno, ToGuest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::actors::mapping::MappingHandle;
use crate::actors::metrics::MetricsHandle;
use crate::config::Settings;
use crate::dest::Router;
use crate::framed::write_frame;
use crate::identity::Identity;
use crate::limits::{Limits, Permit};
use crate::metrics::Event;
use crate::ratelimit::LogLimit;

/// What every session needs: settings, the plain routing rules, the handles, and the limits.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub settings: Arc<Settings>,
    pub router: Router,
    /// Which addresses may be reached at all (shared with dns-cache's rules).
    pub policy: Policy,
    pub mapping: MappingHandle,
    pub metrics: MetricsHandle,
    pub limits: Limits,
    /// Becomes `true` on SIGTERM: listeners close, the acceptor stops.
    pub draining: watch::Receiver<bool>,
    /// Which host address each client of a UDP server on `::` wrote to, learned by the
    /// servers' associations: a server socket the program then connects to one client (passed,
    /// see `udp::connect_passed`) is bound to that address, so its replies come from it.
    pub udp_server_locals: Arc<std::sync::Mutex<LocalTable>>,
    /// Who holds each UDP server port with associations (see [`PortHolders`]).
    pub udp_server_ports: Arc<std::sync::Mutex<PortHolders>>,
    /// The CID of each VM's latest hello (for `outsock vm ls`).
    pub vm_cids: Cids,
    /// Process-mode listeners whose requester made the channel, by channel.
    pub channels: crate::channels::Channels,
}

/// The CID each VM's latest hello carried, by VM name.
#[derive(Debug, Default, Clone)]
pub(crate) struct Cids(Arc<Mutex<HashMap<String, u32>>>);

impl Cids {
    /// Notes a hello's CID (one map look-up when it is unchanged, as on every stream but a
    /// VM's first).
    pub(crate) fn saw(&self, vm: &str, cid: u32) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match m.get_mut(vm) {
            Some(c) => *c = cid,
            None => {
                m.insert(vm.to_owned(), cid);
            }
        }
    }

    pub(crate) fn get(&self, vm: &str) -> u32 {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(vm).copied().unwrap_or(0)
    }
}

/// Which host address each client of a server on `::` wrote to, so the reply leaves from it.
/// Bounded like [`PeerTable`](crate::udp::PeerTable): beyond `capacity` it starts over (a
/// reply then leaves from the kernel's choice of address until the client writes again).
#[derive(Debug)]
pub struct LocalTable {
    capacity: usize,
    map: HashMap<SocketAddr, Ipv6Addr>,
}

impl LocalTable {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            map: HashMap::new(),
        }
    }

    /// A datagram from `peer` came to the local address `to`.
    pub fn learn(&mut self, peer: SocketAddr, to: Ipv6Addr) {
        if self.map.len() >= self.capacity && !self.map.contains_key(&peer) {
            self.map.clear();
        }
        self.map.insert(peer, to);
    }

    /// The local address to answer `peer` from, when known.
    #[must_use]
    pub fn local_for(&self, peer: SocketAddr) -> Option<Ipv6Addr> {
        self.map.get(&peer).copied()
    }
}

/// Which identity holds each UDP server port (host address and port) with associations, and
/// how many: a server's sockets share their port (SO_REUSEADDR), but only one identity's, so
/// another user's (or VM's) server on the same port is EADDRINUSE as natively, never a second
/// socket that takes the first one's datagrams.
#[derive(Debug, Default)]
pub struct PortHolders {
    map: HashMap<(Ipv6Addr, u16), (Identity, usize)>,
}

impl PortHolders {
    /// Whether `who` may use `key`: no one holds it, or `who` does.
    pub fn check(&self, key: (Ipv6Addr, u16), who: &Identity) -> Result<(), Errno> {
        match self.map.get(&key) {
            Some((holder, _)) if holder != who => Err(Errno::EADDRINUSE),
            _ => Ok(()),
        }
    }

    /// `who` holds `key` once more (after [`check`](Self::check)).
    pub fn take(&mut self, key: (Ipv6Addr, u16), who: &Identity) -> Result<(), Errno> {
        self.check(key, who)?;
        self.map.entry(key).or_insert_with(|| (who.clone(), 0)).1 += 1;
        Ok(())
    }

    /// One hold of `key` ends.
    pub fn give_back(&mut self, key: (Ipv6Addr, u16)) {
        if let Some((_, n)) = self.map.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.map.remove(&key);
            }
        }
    }
}

/// A stream whose request is known, with everything its handler needs.
#[derive(Debug)]
pub(crate) struct Request {
    pub stream: UnixStream,
    pub identity: Identity,
    /// Bytes that arrived after the request frame.
    pub leftover: Vec<u8>,
    /// This stream's slot in the identity's socket limit.
    pub permit: Permit,
    /// The descriptor that came with the request (a listen request's packet channel), if any.
    pub passed: Option<std::os::fd::OwnedFd>,
}

impl Request {
    /// Gives the socket slot back, then answers `errno` and closes: once the peer reads the
    /// refusal, the slot is already free for its next request.
    pub(crate) async fn refuse(self, errno: Errno) {
        let Request {
            mut stream, permit, ..
        } = self;
        drop(permit);
        refuse(&mut stream, errno).await;
    }
}

/// Answers `errno` and closes (best effort: the peer may already be gone). The close is
/// graceful: after the answer, host-server shuts its side and discards what the peer still
/// sends (bounded in bytes and time), because closing a Unix stream with unread input makes the
/// peer's next read fail with ECONNRESET instead of delivering the answer and end of stream.
pub(crate) async fn refuse(stream: &mut UnixStream, errno: Errno) {
    if write_frame(stream, &ToGuest::Failed(errno)).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left: usize = 256 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// What a refused destination was for, in the log line.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Use {
    Connect,
    Send,
    Reply,
}

/// Asks the destination policy about `addr` for `identity`: `Ok` to go ahead; otherwise EACCES
/// for the program, one count in `outsock_host_refused_destinations_total{reason}` and a
/// rate-limited log line naming the identity.
pub(crate) fn admit(
    shared: &Shared,
    identity: &Identity,
    addr: IpAddr,
    what: Use,
) -> Result<(), Errno> {
    let Err(reason) = shared.policy.check(addr) else {
        return Ok(());
    };
    shared
        .metrics
        .record(Event::RefusedDestination(reason.as_str()));
    static LOG: LogLimit = LogLimit::new();
    if LOG.allow() {
        tracing::warn!(
            %identity,
            destination = %addr,
            reason = reason.as_str(),
            what = ?what,
            "refused destination (destination policy)"
        );
    }
    Err(Errno::EACCES)
}
