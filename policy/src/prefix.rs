//! IPv4 and IPv6 network prefixes (`a.b.c.d/len`, `x:y::/len`): parsed strictly (host bits set
//! after the length are an error, since the text would not name the network it seems to), and
//! tested for containment and overlap with integer masks, without allocating.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use thiserror::Error;

/// Why a prefix was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrefixError {
    #[error("expected a prefix such as 10.170.160.0/20 or 2001:db8::/32, got {0:?}")]
    Syntax(String),
    #[error("prefix {0} has bits set after its length; write the network address")]
    HostBits(String),
    #[error("expected an IPv4 prefix, got the IPv6 prefix {0}")]
    NotIpv4(String),
}

fn mask4(len: u8) -> u32 {
    match len {
        0 => 0,
        l => u32::MAX << (32 - u32::from(l.min(32))),
    }
}

fn mask6(len: u8) -> u128 {
    match len {
        0 => 0,
        l => u128::MAX << (128 - u32::from(l.min(128))),
    }
}

/// An IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// The prefix `addr/len`.
    ///
    /// # Errors
    /// A length above 32 ([`PrefixError::Syntax`]) or host bits set ([`PrefixError::HostBits`]).
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, PrefixError> {
        if len > 32 {
            return Err(PrefixError::Syntax(format!("{addr}/{len}")));
        }
        if u32::from(addr) & !mask4(len) != 0 {
            return Err(PrefixError::HostBits(format!("{addr}/{len}")));
        }
        Ok(Self { addr, len })
    }

    /// A built-in prefix known to be valid (host bits are cleared).
    #[must_use]
    pub const fn from_octets(o: [u8; 4], len: u8) -> Self {
        let bits = u32::from_be_bytes(o);
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - len as u32)
        };
        let [a, b, c, d] = (bits & mask).to_be_bytes();
        Self {
            addr: Ipv4Addr::new(a, b, c, d),
            len,
        }
    }

    /// The network address.
    #[must_use]
    pub fn network(self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    #[must_use]
    pub fn prefix_len(self) -> u8 {
        self.len
    }

    /// Whether `a` lies inside this prefix.
    #[must_use]
    pub fn contains(self, a: Ipv4Addr) -> bool {
        u32::from(a) & mask4(self.len) == u32::from(self.addr)
    }

    /// Whether `other` lies wholly inside this prefix.
    #[must_use]
    pub fn covers(self, other: Self) -> bool {
        self.len <= other.len && self.contains(other.addr)
    }

    /// Whether the two prefixes share an address.
    #[must_use]
    pub fn overlaps(self, other: Self) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl FromStr for Ipv4Net {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<IpNet>()? {
            IpNet::V4(n) => Ok(n),
            IpNet::V6(_) => Err(PrefixError::NotIpv4(s.trim().to_owned())),
        }
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Net {
    bits: u128,
    len: u8,
}

impl Ipv6Net {
    /// The prefix `addr/len`.
    ///
    /// # Errors
    /// A length above 128 ([`PrefixError::Syntax`]) or host bits set ([`PrefixError::HostBits`]).
    pub fn new(addr: Ipv6Addr, len: u8) -> Result<Self, PrefixError> {
        if len > 128 {
            return Err(PrefixError::Syntax(format!("{addr}/{len}")));
        }
        let bits = u128::from(addr);
        if bits & !mask6(len) != 0 {
            return Err(PrefixError::HostBits(format!("{addr}/{len}")));
        }
        Ok(Self { bits, len })
    }

    /// A built-in prefix known to be valid (host bits are cleared).
    #[must_use]
    pub const fn from_bits(bits: u128, len: u8) -> Self {
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len as u32)
        };
        Self {
            bits: bits & mask,
            len,
        }
    }

    /// The network address.
    #[must_use]
    pub fn network(self) -> Ipv6Addr {
        Ipv6Addr::from(self.bits)
    }

    /// The prefix length.
    #[must_use]
    pub fn prefix_len(self) -> u8 {
        self.len
    }

    /// Whether `a` lies inside this prefix.
    #[must_use]
    pub fn contains(self, a: Ipv6Addr) -> bool {
        u128::from(a) & mask6(self.len) == self.bits
    }

    /// Whether `other` lies wholly inside this prefix.
    #[must_use]
    pub fn covers(self, other: Self) -> bool {
        self.len <= other.len && self.contains(other.network())
    }

    /// Whether the two prefixes share an address.
    #[must_use]
    pub fn overlaps(self, other: Self) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }
}

impl FromStr for Ipv6Net {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<IpNet>()? {
            IpNet::V6(n) => Ok(n),
            IpNet::V4(_) => Err(PrefixError::Syntax(s.trim().to_owned())),
        }
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.len)
    }
}

/// An IPv4 or IPv6 prefix, as written in the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpNet {
    V4(Ipv4Net),
    V6(Ipv6Net),
}

impl FromStr for IpNet {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || PrefixError::Syntax(s.to_owned());
        let (a, l) = t.split_once('/').ok_or_else(bad)?;
        if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let len: u8 = l.parse().map_err(|_| bad())?;
        match a.parse::<IpAddr>().map_err(|_| bad())? {
            IpAddr::V4(v4) => Ipv4Net::new(v4, len).map(IpNet::V4),
            IpAddr::V6(v6) => Ipv6Net::new(v6, len).map(IpNet::V6),
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpNet::V4(n) => n.fmt(f),
            IpNet::V6(n) => n.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_prefixes_parse_and_contain() {
        let n: Ipv4Net = "10.170.160.0/20".parse().unwrap();
        assert!(n.contains(Ipv4Addr::new(10, 170, 175, 255)));
        assert!(!n.contains(Ipv4Addr::new(10, 170, 176, 0)));
        assert!(matches!(
            "10.170.160.1/20".parse::<Ipv4Net>(),
            Err(PrefixError::HostBits(_))
        ));
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0/+8".parse::<Ipv4Net>().is_err());
        assert!("nonsense".parse::<Ipv4Net>().is_err());
        assert!(matches!(
            "2001:db8::/32".parse::<Ipv4Net>(),
            Err(PrefixError::NotIpv4(_))
        ));
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::BROADCAST));
        assert!(all.overlaps(n) && all.covers(n) && !n.covers(all));
        assert!(!n.overlaps("172.21.112.0/20".parse().unwrap()));
        assert_eq!(n.to_string(), "10.170.160.0/20");
        assert_eq!(
            Ipv4Net::from_octets([169, 254, 9, 9], 16).to_string(),
            "169.254.0.0/16"
        );
    }

    #[test]
    fn ipv6_prefixes_parse_and_contain() {
        let n: Ipv6Net = "2001:db8:1::/48".parse().unwrap();
        assert!(n.contains("2001:db8:1:ffff::1".parse().unwrap()));
        assert!(!n.contains("2001:db8:2::1".parse().unwrap()));
        assert!(matches!(
            "2001:db8::1/64".parse::<Ipv6Net>(),
            Err(PrefixError::HostBits(_))
        ));
        assert!("2001:db8::/129".parse::<Ipv6Net>().is_err());
        assert!("2001:db8::".parse::<Ipv6Net>().is_err());
        let all: Ipv6Net = "::/0".parse().unwrap();
        assert!(all.covers(n) && all.overlaps(n) && !n.covers(all));
        let host: Ipv6Net = "::1/128".parse().unwrap();
        assert!(host.contains(Ipv6Addr::LOCALHOST));
        assert_eq!(n.to_string(), "2001:db8:1::/48");
        assert_eq!(
            " fd00::/8 ".parse::<IpNet>().unwrap().to_string(),
            "fd00::/8"
        );
    }
}
