//! Who may ask dns-cache's DNS listeners: the `allow_clients` prefixes, plus loopback always.
//! Only listeners on a non-loopback address need the list (a start-up error names the key
//! otherwise, [`crate::config`]); queries from anyone else are answered REFUSED and counted
//! (`outsock_dns_refused_clients_total`), so dns-cache is never an open resolver by accident.

use std::net::IpAddr;
use std::str::FromStr;

/// One allowed prefix, IPv4 or IPv6 (`fd00:64::/64`, `192.0.2.0/24`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientNet {
    addr: IpAddr,
    len: u8,
}

/// Why an `allow_clients` entry could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not an address or ADDRESS/LENGTH prefix")]
pub struct ClientNetError(String);

impl FromStr for ClientNet {
    type Err = ClientNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ClientNetError(s.to_owned());
        let (a, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        Ok(Self { addr, len })
    }
}

impl ClientNet {
    /// Whether `ip` lies in this prefix (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The clients a DNS listener answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<ClientNet>,
}

impl AllowList {
    /// Loopback and `nets`.
    pub fn new(nets: Vec<ClientNet>) -> Self {
        Self { nets }
    }

    /// Whether a query from `ip` is answered.
    pub fn allows(&self, ip: IpAddr) -> bool {
        ip.to_canonical().is_loopback() || self.nets.iter().any(|n| n.contains(ip))
    }
}

/// The REFUSED answer to `query`: its header with QR set, the opcode and RD kept, RCODE 5 and
/// no records; the question is echoed when it is a plain one. `None` for a packet that gets no
/// answer at all (shorter than a header, or itself a response: never reflect those).
pub fn refused(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    if header[2] & 0x80 != 0 {
        return None;
    }
    let question = crate::packet::QueryView::parse(query).map(|q| {
        &query[crate::packet::QUESTION_AT..crate::packet::QUESTION_AT + q.qname.len() + 4]
    });
    let mut out = Vec::with_capacity(12 + question.map_or(0, <[u8]>::len));
    out.extend_from_slice(&header[..2]);
    // QR, OPCODE and RD kept (AA, TC cleared); RA clear, Z clear, RCODE 5 (REFUSED).
    out.push(0x80 | (header[2] & 0x79));
    out.push(5);
    out.extend_from_slice(&[0, u8::from(question.is_some()), 0, 0, 0, 0, 0, 0]);
    if let Some(q) = question {
        out.extend_from_slice(q);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_their_family_only() {
        let list = AllowList::new(vec![
            "fd00:64::/64".parse().unwrap(),
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
        ]);
        for ok in [
            "fd00:64::2",
            "192.0.2.9",
            "::ffff:192.0.2.9",
            "2001:db8::7",
            "::1",
            "127.0.0.2",
        ] {
            assert!(list.allows(ok.parse().unwrap()), "{ok}");
        }
        for no in ["fd00:65::2", "192.0.3.1", "2001:db8::8", "10.0.0.1"] {
            assert!(!list.allows(no.parse().unwrap()), "{no}");
        }
        assert!(AllowList::default().allows("::1".parse().unwrap()));
        assert!(!AllowList::default().allows("fd00:64::2".parse().unwrap()));
        assert!("::/0"
            .parse::<ClientNet>()
            .unwrap()
            .contains("2001::1".parse().unwrap()));
        for bad in ["fd00::/129", "10.0.0.0/33", "nope", "10.0.0.0/x"] {
            assert!(bad.parse::<ClientNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn refused_echoes_the_question_and_never_answers_responses() {
        // id 0x1234, RD, one question: a.test. A IN.
        let q = [
            0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 4, b't', b'e', b's', b't', 0,
            0, 1, 0, 1,
        ];
        let r = refused(&q).unwrap();
        assert_eq!(&r[..4], &[0x12, 0x34, 0x81, 0x05]);
        assert_eq!(&r[4..6], &[0, 1]);
        assert_eq!(&r[12..], &q[12..]);
        let mut response = q;
        response[2] |= 0x80;
        assert!(refused(&response).is_none());
        assert!(refused(&q[..5]).is_none());
        // Not a plain query: the header alone.
        let mut two = q;
        two[5] = 2;
        assert_eq!(refused(&two).unwrap().len(), 12);
    }
}
