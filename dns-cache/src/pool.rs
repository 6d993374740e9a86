//! IPv4 prefixes for the two address pools, and the checks that keep them away from each other and
//! from the host's own IPv4 routes.
//!
//! A dummy address that is also a real destination would silently send a guest's traffic to the
//! wrong place, so both pools are checked at start-up against each other, against
//! `/proc/net/route` and against the IPv4 addresses of this network namespace's interfaces
//! (DESIGN.md §5, RFC 6535 §4.4). Containers are where this bites: Docker's default address
//! pools (172.17.0.0/16 to 172.31.0.0/16, 192.168.0.0/16) include the default source pool, so
//! the message says what to change.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Why a prefix or a pool layout was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The text is not `a.b.c.d/len`.
    #[error("`{0}` is not an IPv4 prefix of the form a.b.c.d/len")]
    Syntax(String),
    /// The prefix length leaves too few addresses for a pool.
    #[error("prefix length /{0} is out of range: a pool needs a length between /8 and /29")]
    Length(u8),
    /// Host bits are set, so the text does not name the network it seems to.
    #[error("`{0}` has host bits set; write the network address")]
    HostBits(String),
    /// The destination and source pools share addresses.
    #[error("the destination pool {0} and the source pool {1} overlap")]
    PoolsOverlap(Ipv4Prefix, Ipv4Prefix),
    /// A pool shares addresses with a route of this host.
    #[error(
        "the {which} pool {pool} overlaps the local route {route} on {iface}: {}",
        remedy(route)
    )]
    RouteOverlap {
        /// Which pool (destination or source).
        which: &'static str,
        /// The pool's prefix.
        pool: Ipv4Prefix,
        /// The conflicting route.
        route: Ipv4Prefix,
        /// The interface of that route.
        iface: String,
    },
    /// A pool holds an address of one of this host's interfaces.
    #[error(
        "the {which} pool {pool} holds {addr}, an address of {iface}: {}",
        remedy(&Ipv4Prefix { base: u32::from(*addr), len: 32 })
    )]
    AddressOverlap {
        /// Which pool (destination or source).
        which: &'static str,
        /// The pool's prefix.
        pool: Ipv4Prefix,
        /// The interface address inside it.
        addr: Ipv4Addr,
        /// The interface.
        iface: String,
    },
    /// The interface addresses could not be read.
    #[error("cannot read the interface addresses (getifaddrs)")]
    Addresses(#[source] nix::Error),
    /// The route table could not be read.
    #[error("cannot read the route table {path}")]
    Routes {
        /// Path of the route table.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// An IPv4 network prefix such as `10.170.160.0/20`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Prefix {
    base: u32,
    len: u8,
}

impl Ipv4Prefix {
    /// Builds a pool prefix, checking the length and that no host bits are set.
    pub fn new(base: Ipv4Addr, len: u8) -> Result<Self, PoolError> {
        if !(8..=29).contains(&len) {
            return Err(PoolError::Length(len));
        }
        let base = u32::from(base);
        if base & !mask(len) != 0 {
            return Err(PoolError::HostBits(format!(
                "{}/{len}",
                Ipv4Addr::from(base)
            )));
        }
        Ok(Self { base, len })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The lowest address a host may use (the network address is skipped).
    pub fn first_usable(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// The highest address a host may use (the broadcast address is skipped: some stacks refuse
    /// to connect to an address ending in all ones).
    pub fn last_usable(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base | !mask(self.len)).saturating_prev()
    }

    /// Whether `addr` lies inside the prefix.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.len) == self.base
    }

    /// Whether the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Self) -> bool {
        let len = self.len.min(other.len);
        self.base & mask(len) == other.base & mask(len)
    }

    /// Whether a route (which may be shorter than /8, or a host route) shares addresses with
    /// this prefix. Routes are kept as raw `(network, length)` because the kernel allows lengths
    /// that a pool does not.
    fn overlaps_raw(&self, net: u32, len: u8) -> bool {
        let len = self.len.min(len);
        self.base & mask(len) == net & mask(len)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = PoolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| PoolError::Syntax(s.to_owned()))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| PoolError::Syntax(s.to_owned()))?;
        let len: u8 = len.parse().map_err(|_| PoolError::Syntax(s.to_owned()))?;
        Self::new(addr, len)
    }
}

/// What to do about a pool that overlaps `local`, for the error message: a local prefix inside
/// Docker's default address pools most likely is a Docker network's.
fn remedy(local: &Ipv4Prefix) -> &'static str {
    const DOCKER_POOLS: [(u32, u8); 2] = [(0xac10_0000, 12), (0xc0a8_0000, 16)];
    if DOCKER_POOLS
        .iter()
        .any(|&(net, len)| local.len >= len && local.base & mask(len) == net)
    {
        "a dummy there would be taken for a real address. This looks like a Docker network \
         (Docker's default address pools are 172.17.0.0/16 to 172.31.0.0/16 and \
         192.168.0.0/16): give the network explicit subnets off the pools (docker-compose: \
         ipam config), or move destination_pool/source_pool (in host-server's settings too)"
    } else {
        "a dummy there would be taken for a real address. Give this network other subnets, \
         or move destination_pool/source_pool (in host-server's settings too)"
    }
}

trait SaturatingPrev {
    fn saturating_prev(self) -> Self;
}

impl SaturatingPrev for Ipv4Addr {
    fn saturating_prev(self) -> Self {
        Ipv4Addr::from(u32::from(self).saturating_sub(1))
    }
}

fn mask(len: u8) -> u32 {
    match len {
        0 => 0,
        l => u32::MAX << (32 - u32::from(l.min(32))),
    }
}

/// One IPv4 route of the host, as read from `/proc/net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Interface name.
    pub iface: String,
    /// Destination network.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

/// Parses the text of `/proc/net/route`. Lines that do not parse are skipped: the file's format
/// is fixed by the kernel, and a line we cannot read cannot name a route we could check anyway.
pub fn parse_routes(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let iface = (*cols.first()?).to_owned();
            // The kernel prints the address as hex of the u32 that holds the network-order
            // bytes in host order, so the native-endian bytes of that number are the address.
            let dest = u32::from_str_radix(cols.get(1)?, 16).ok()?;
            let maskv = u32::from_str_radix(cols.get(7)?, 16).ok()?;
            let dest = u32::from_be_bytes(dest.to_ne_bytes());
            let maskv = u32::from_be_bytes(maskv.to_ne_bytes());
            if maskv.leading_ones() + maskv.trailing_zeros() != 32 && maskv != 0 {
                return None;
            }
            Some(Route {
                iface,
                network: Ipv4Addr::from(dest),
                len: u8::try_from(maskv.leading_ones()).ok()?,
            })
        })
        .collect()
}

/// Reads and parses a route table file such as `/proc/net/route`. A missing file (no IPv4 stack)
/// means no routes.
pub fn read_routes(path: &str) -> Result<Vec<Route>, PoolError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_routes(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(PoolError::Routes {
            path: path.to_owned(),
            source,
        }),
    }
}

/// One IPv4 address of an interface of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceAddr {
    /// Interface name.
    pub iface: String,
    /// The address.
    pub addr: Ipv4Addr,
}

/// Reads the IPv4 addresses of this network namespace's interfaces. An address need not have a
/// route of its own in the main table (`noprefixroute`, a /32), so routes alone can miss one.
pub fn read_addresses() -> Result<Vec<IfaceAddr>, PoolError> {
    Ok(nix::ifaddrs::getifaddrs()
        .map_err(PoolError::Addresses)?
        .filter_map(|ifa| {
            let addr = ifa.address?.as_sockaddr_in()?.ip();
            Some(IfaceAddr {
                iface: ifa.interface_name,
                addr,
            })
        })
        .collect())
}

/// Checks that the two pools do not overlap each other, nor any non-default local route, nor
/// any interface address. The default route (length 0) covers everything and says nothing
/// about local addresses, so it is left out.
pub fn check_pools(
    destination: &Ipv4Prefix,
    source: &Ipv4Prefix,
    routes: &[Route],
    addrs: &[IfaceAddr],
) -> Result<(), PoolError> {
    if destination.overlaps(source) {
        return Err(PoolError::PoolsOverlap(*destination, *source));
    }
    for (which, pool) in [("destination", destination), ("source", source)] {
        for route in routes.iter().filter(|r| r.len > 0) {
            if pool.overlaps_raw(u32::from(route.network), route.len) {
                return Err(PoolError::RouteOverlap {
                    which,
                    pool: *pool,
                    route: Ipv4Prefix {
                        base: u32::from(route.network),
                        len: route.len,
                    },
                    iface: route.iface.clone(),
                });
            }
        }
        if let Some(a) = addrs.iter().find(|a| pool.contains(a.addr)) {
            return Err(PoolError::AddressOverlap {
                which,
                pool: *pool,
                addr: a.addr,
                iface: a.iface.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
eth1\t0000AA0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    #[test]
    fn parses_and_describes_prefixes() {
        let p: Ipv4Prefix = "10.170.160.0/20".parse().unwrap();
        assert_eq!(p.to_string(), "10.170.160.0/20");
        assert_eq!(p.first_usable(), Ipv4Addr::new(10, 170, 160, 1));
        assert_eq!(p.last_usable(), Ipv4Addr::new(10, 170, 175, 254));
        assert!(p.contains(Ipv4Addr::new(10, 170, 175, 255)));
        assert!(!p.contains(Ipv4Addr::new(10, 170, 176, 0)));
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert!(matches!(
            "10.0.0.0".parse::<Ipv4Prefix>(),
            Err(PoolError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Ipv4Prefix>(),
            Err(PoolError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/31".parse::<Ipv4Prefix>(),
            Err(PoolError::Length(31))
        ));
        assert!(matches!(
            "10.0.0.0/4".parse::<Ipv4Prefix>(),
            Err(PoolError::Length(4))
        ));
        assert!(matches!(
            "10.0.0.1/24".parse::<Ipv4Prefix>(),
            Err(PoolError::HostBits(_))
        ));
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        let a: Ipv4Prefix = "10.170.160.0/20".parse().unwrap();
        let b: Ipv4Prefix = "10.170.170.0/24".parse().unwrap();
        let c: Ipv4Prefix = "10.170.176.0/20".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
    }

    #[test]
    fn reads_proc_net_route() {
        let routes = parse_routes(ROUTES);
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].len, 0);
        assert_eq!(routes[1].network, Ipv4Addr::new(192, 0, 2, 0));
        assert_eq!(routes[1].len, 24);
        assert_eq!(routes[2].network, Ipv4Addr::new(10, 170, 0, 0));
        assert_eq!(routes[2].len, 16);
    }

    #[test]
    fn checks_pools_against_each_other_and_routes() {
        let dst: Ipv4Prefix = "10.170.160.0/20".parse().unwrap();
        let src: Ipv4Prefix = "172.21.112.0/20".parse().unwrap();
        let routes = parse_routes(ROUTES);
        // The default route alone never conflicts.
        assert!(check_pools(&dst, &src, &routes[..2], &[]).is_ok());
        assert!(matches!(
            check_pools(&dst, &src, &routes, &[]),
            Err(PoolError::RouteOverlap {
                which: "destination",
                ..
            })
        ));
        assert!(matches!(
            check_pools(&dst, &dst, &[], &[]),
            Err(PoolError::PoolsOverlap(..))
        ));
    }

    #[test]
    fn an_interface_address_inside_a_pool_is_named() {
        let dst: Ipv4Prefix = "10.170.160.0/20".parse().unwrap();
        let src: Ipv4Prefix = "172.21.112.0/20".parse().unwrap();
        let lo = IfaceAddr {
            iface: "lo".into(),
            addr: Ipv4Addr::LOCALHOST,
        };
        let eth0 = IfaceAddr {
            iface: "eth0".into(),
            addr: Ipv4Addr::new(172, 21, 120, 9),
        };
        assert!(check_pools(&dst, &src, &[], std::slice::from_ref(&lo)).is_ok());
        let err = check_pools(&dst, &src, &[], &[lo, eth0]).unwrap_err();
        assert!(matches!(
            err,
            PoolError::AddressOverlap { which: "source", iface: ref i, .. } if i == "eth0"
        ));
        let msg = err.to_string();
        assert!(msg
            .starts_with("the source pool 172.21.112.0/20 holds 172.21.120.9, an address of eth0"));
        assert!(msg.contains("Docker's default address pools"), "{msg}");
    }

    #[test]
    fn a_docker_network_route_gets_the_docker_advice() {
        let dst: Ipv4Prefix = "10.170.160.0/20".parse().unwrap();
        let src: Ipv4Prefix = "172.21.112.0/20".parse().unwrap();
        // A compose network Docker gave 172.21.0.0/16, as it does from its default pools.
        let docker = Route {
            iface: "eth0".into(),
            network: Ipv4Addr::new(172, 21, 0, 0),
            len: 16,
        };
        let msg = check_pools(&dst, &src, &[docker], &[])
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with(
            "the source pool 172.21.112.0/20 overlaps the local route 172.21.0.0/16 on eth0: "
        ));
        assert!(msg.contains("explicit subnets"), "{msg}");
        // Elsewhere the advice does not mention Docker.
        let other = Route {
            iface: "eth1".into(),
            network: Ipv4Addr::new(10, 170, 0, 0),
            len: 16,
        };
        let msg = check_pools(&dst, &src, &[other], &[])
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("Docker"), "{msg}");
        // A wide route (10/8) that is no Docker network gets the plain advice too.
        assert!(remedy(&"10.0.0.0/8".parse().unwrap()).starts_with("a dummy there"));
    }
}
