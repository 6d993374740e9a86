//! The host's own addresses, which are never destinations: a guest must not reach a service of
//! the host through a name (or a mapping) that points back at the host.
//!
//! Read with getifaddrs at start, then re-read whenever the kernel announces an address change
//! on a netlink socket subscribed to `RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR` (one small
//! thread per process; a burst of announcements is read through before one re-read). Where the
//! netlink socket cannot be opened, the thread re-reads every [`POLL_FALLBACK`] instead. The
//! set is swapped in whole ([`arc_swap`]), so a check on the connect path takes no lock and
//! allocates nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use thiserror::Error;

/// How often the addresses are re-read when no netlink socket could be opened.
pub const POLL_FALLBACK: Duration = Duration::from_secs(5);

/// Why the host's addresses could not be read.
#[derive(Debug, Error)]
pub enum HostError {
    #[error("cannot read the host's addresses (getifaddrs)")]
    Read(#[source] nix::Error),
    #[error("cannot start the thread that follows address changes")]
    Thread(#[source] std::io::Error),
}

/// One snapshot of the host's addresses (small: a host has a handful).
#[derive(Debug, Default, PartialEq, Eq)]
struct Addrs {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

impl Addrs {
    fn read() -> Result<Self, HostError> {
        let mut a = Self::default();
        for ifa in nix::ifaddrs::getifaddrs().map_err(HostError::Read)? {
            let Some(addr) = ifa.address else { continue };
            if let Some(sin) = addr.as_sockaddr_in() {
                a.v4.push(sin.ip());
            } else if let Some(sin6) = addr.as_sockaddr_in6() {
                a.v6.push(sin6.ip());
            }
        }
        a.v4.sort_unstable();
        a.v4.dedup();
        a.v6.sort_unstable();
        a.v6.dedup();
        Ok(a)
    }
}

/// The host's own addresses, kept current; cheap to clone and to check.
#[derive(Debug, Clone)]
pub struct HostAddresses {
    current: Arc<ArcSwap<Addrs>>,
}

impl HostAddresses {
    /// A fixed set (tests, or a daemon told not to look).
    #[must_use]
    pub fn fixed(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut a = Addrs::default();
        for ip in addrs {
            match ip {
                IpAddr::V4(v4) => a.v4.push(v4),
                IpAddr::V6(v6) => a.v6.push(v6),
            }
        }
        Self {
            current: Arc::new(ArcSwap::from_pointee(a)),
        }
    }

    /// Reads the addresses now and follows their changes on a background thread for the rest
    /// of the process's life.
    ///
    /// # Errors
    /// [`HostError`] when the first read or the thread fails.
    pub fn watch() -> Result<Self, HostError> {
        // Subscribe before the first read, so that no change between the two is missed.
        let nl = subscribe();
        let current = Arc::new(ArcSwap::from_pointee(Addrs::read()?));
        let target = Arc::clone(&current);
        std::thread::Builder::new()
            .name("outsock-host-addrs".into())
            .spawn(move || follow(nl.as_ref(), &target))
            .map_err(HostError::Thread)?;
        let me = Self { current };
        tracing::info!(addresses = ?me.snapshot(), "the host's own addresses (never destinations)");
        Ok(me)
    }

    /// Whether `a` is one of the host's IPv4 addresses.
    #[must_use]
    pub fn contains_v4(&self, a: Ipv4Addr) -> bool {
        self.current.load().v4.contains(&a)
    }

    /// Whether `a` is one of the host's IPv6 addresses.
    #[must_use]
    pub fn contains_v6(&self, a: Ipv6Addr) -> bool {
        self.current.load().v6.contains(&a)
    }

    /// The addresses now (logs and tests).
    #[must_use]
    pub fn snapshot(&self) -> Vec<IpAddr> {
        let a = self.current.load();
        a.v4.iter()
            .copied()
            .map(IpAddr::V4)
            .chain(a.v6.iter().copied().map(IpAddr::V6))
            .collect()
    }
}

/// A netlink socket subscribed to address changes, or `None` (then the thread polls).
fn subscribe() -> Option<OwnedFd> {
    let groups = u32::try_from(libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR).ok()?;
    let opened = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .and_then(|fd| bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).map(|()| fd));
    match opened {
        Ok(fd) => Some(fd),
        Err(error) => {
            tracing::warn!(%error, every = ?POLL_FALLBACK, "no netlink socket for address changes; polling");
            None
        }
    }
}

/// The thread: waits for announcements (or the poll interval) and swaps in a fresh read.
fn follow(nl: Option<&OwnedFd>, target: &ArcSwap<Addrs>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match nl {
            Some(fd) => {
                // Any message, or an overflow (ENOBUFS: announcements were lost), means re-read.
                if let Err(e) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    if e != nix::errno::Errno::ENOBUFS && e != nix::errno::Errno::EINTR {
                        tracing::warn!(error = %e, "netlink read failed; re-reading the addresses");
                        std::thread::sleep(POLL_FALLBACK);
                    }
                }
                // Read through the rest of a burst before re-reading once.
                while recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).is_ok() {}
            }
            None => std::thread::sleep(POLL_FALLBACK),
        }
        match Addrs::read() {
            Ok(fresh) => {
                if **target.load() != fresh {
                    tracing::info!(v4 = ?fresh.v4, v6 = ?fresh.v6, "the host's addresses changed");
                    target.store(Arc::new(fresh));
                }
            }
            Err(error) => tracing::warn!(%error, "cannot re-read the host's addresses"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_set_is_checked_by_family() {
        let h = HostAddresses::fixed(["fd00:64::1".parse().unwrap(), "192.0.2.7".parse().unwrap()]);
        assert!(h.contains_v6("fd00:64::1".parse().unwrap()));
        assert!(!h.contains_v6("fd00:64::2".parse().unwrap()));
        assert!(h.contains_v4("192.0.2.7".parse().unwrap()));
        assert!(!h.contains_v4("192.0.2.8".parse().unwrap()));
        assert_eq!(h.snapshot().len(), 2);
    }

    #[test]
    fn the_real_addresses_include_loopback() {
        // Reads this process's namespace only; sends nothing.
        let h = HostAddresses::watch().unwrap();
        assert!(h.contains_v4(Ipv4Addr::LOCALHOST) || h.contains_v6(Ipv6Addr::LOCALHOST));
    }
}
