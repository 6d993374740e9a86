//! Where an outsourced IPv4 destination really goes: a dummy address (look it up), the guest DNS
//! address (answered by dns-cache), a real IPv4 address (only with IPv4 egress), or nowhere.
//! Whether the address behind it may be reached is the destination policy's question
//! (`outsock_policy::Policy`, asked by `context::admit`), not this module's.

use std::net::{Ipv4Addr, SocketAddrV4};

/// The IPv4 prefix type of the pools (shared with the destination policy).
pub use outsock_policy::Ipv4Net;

/// The decision for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A dummy address from one of the pools: map it to IPv6 through dns-cache.
    Dummy(Ipv4Addr),
    /// The guest DNS address on port 53: dns-cache answers.
    GuestDns,
    /// A real IPv4 address, and IPv4 egress is enabled.
    Ipv4(SocketAddrV4),
    /// A real IPv4 address without egress, or an address that can never be reached from here
    /// (unspecified, broadcast, multicast): ENETUNREACH, as a host without an IPv4 route says.
    Unreachable,
}

/// The plain rules, built from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Router {
    pub destination_pool: Ipv4Net,
    pub source_pool: Ipv4Net,
    pub guest_dns: Ipv4Addr,
    pub ipv4_egress: bool,
}

impl Router {
    /// Classifies `dest`.
    #[must_use]
    pub fn route(&self, dest: SocketAddrV4) -> Route {
        let ip = *dest.ip();
        if ip == self.guest_dns {
            // Only port 53 is served there; no host stands behind the other ports.
            return if dest.port() == 53 {
                Route::GuestDns
            } else {
                Route::Unreachable
            };
        }
        if self.destination_pool.contains(ip) || self.source_pool.contains(ip) {
            return Route::Dummy(ip);
        }
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Route::Unreachable;
        }
        if self.ipv4_egress {
            Route::Ipv4(dest)
        } else {
            Route::Unreachable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(egress: bool) -> Router {
        Router {
            destination_pool: "10.170.160.0/20".parse().unwrap(),
            source_pool: "172.21.112.0/20".parse().unwrap(),
            guest_dns: Ipv4Addr::new(10, 170, 160, 1),
            ipv4_egress: egress,
        }
    }

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn routes() {
        let r = router(false);
        assert_eq!(r.route(sa("10.170.160.1:53")), Route::GuestDns);
        assert_eq!(r.route(sa("10.170.160.1:80")), Route::Unreachable);
        assert_eq!(
            r.route(sa("10.170.160.9:80")),
            Route::Dummy(Ipv4Addr::new(10, 170, 160, 9))
        );
        assert_eq!(
            r.route(sa("172.21.112.4:22")),
            Route::Dummy(Ipv4Addr::new(172, 21, 112, 4))
        );
        assert_eq!(r.route(sa("203.0.113.10:80")), Route::Unreachable);
        assert_eq!(
            router(true).route(sa("203.0.113.10:80")),
            Route::Ipv4(sa("203.0.113.10:80"))
        );
        assert_eq!(router(true).route(sa("0.0.0.0:80")), Route::Unreachable);
        assert_eq!(router(true).route(sa("224.0.0.1:80")), Route::Unreachable);
    }
}
