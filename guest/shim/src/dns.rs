//! Just enough DNS for the resolver functions the shim answers: build a query, parse A and PTR
//! answers (following compression pointers, with a bound on them), read the response code.
//! Pure code, unit-tested; malformed answers are errors, never panics.

use std::net::Ipv4Addr;

/// What an A query came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Addresses(Vec<Ipv4Addr>),
    /// The name does not exist (NXDOMAIN).
    NoName,
    /// The name exists but has no A record (NOERROR, empty).
    NoData,
    /// SERVFAIL, REFUSED, a malformed or mismatched answer: try again later.
    Failed,
}

pub const TYPE_A: u16 = 1;
pub const TYPE_PTR: u16 = 12;
pub const CLASS_IN: u16 = 1;

/// An A query for `name` with id `id` and recursion desired; `None` for an invalid name.
#[must_use]
pub fn query_a(id: u16, name: &str) -> Option<Vec<u8>> {
    query(id, name, TYPE_A, CLASS_IN)
}

/// The reverse-lookup name of an IPv4 address (`d.c.b.a.in-addr.arpa`).
#[must_use]
pub fn reverse_name(a: Ipv4Addr) -> String {
    let [x, y, z, w] = a.octets();
    format!("{w}.{z}.{y}.{x}.in-addr.arpa")
}

/// A query of any type and class for `name`; `None` for an invalid name.
#[must_use]
pub fn query(id: u16, name: &str, qtype: u16, qclass: u16) -> Option<Vec<u8>> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question.
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    for label in name.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&qclass.to_be_bytes());
    Some(q)
}

/// The response code of an answer to query `id`, if it is one.
#[must_use]
pub fn rcode(id: u16, packet: &[u8]) -> Option<u8> {
    let h = packet.get(..4)?;
    (u16::from_be_bytes([h[0], h[1]]) == id && h[2] & 0x80 != 0).then_some(h[3] & 0x0f)
}

/// Reads the (possibly compressed) name at `pos` in `packet`, as dotted text.
fn read_name(packet: &[u8], mut pos: usize) -> Option<String> {
    let mut out = String::new();
    // Each pointer must go backwards, and there are at most this many labels and pointers:
    // a compression loop ends as an error.
    for _ in 0..128 {
        let len = *packet.get(pos)?;
        match len {
            0 => return Some(if out.is_empty() { ".".into() } else { out }),
            l if l & 0xc0 == 0xc0 => {
                let target = usize::from(u16::from_be_bytes([l & 0x3f, *packet.get(pos + 1)?]));
                if target >= pos {
                    return None;
                }
                pos = target;
            }
            l if l & 0xc0 == 0 => {
                let label = packet.get(pos + 1..pos + 1 + usize::from(l))?;
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(std::str::from_utf8(label).ok()?);
                pos += 1 + usize::from(l);
            }
            _ => return None,
        }
    }
    None
}

/// The names in the PTR records of the answer to query `id`.
///
/// # Errors
/// `NoName` (NXDOMAIN), `NoData` (no PTR record), `Failed` (anything else or malformed).
pub fn parse_ptr(id: u16, packet: &[u8]) -> Result<Vec<String>, Answer> {
    let rc = rcode(id, packet).ok_or(Answer::Failed)?;
    match rc {
        0 => {}
        3 => return Err(Answer::NoName),
        _ => return Err(Answer::Failed),
    }
    let mut c = Cursor {
        buf: packet,
        pos: 4,
    };
    let (qd, an) = (
        c.u16().ok_or(Answer::Failed)?,
        c.u16().ok_or(Answer::Failed)?,
    );
    c.skip(4).ok_or(Answer::Failed)?;
    for _ in 0..qd {
        c.skip_name().ok_or(Answer::Failed)?;
        c.skip(4).ok_or(Answer::Failed)?;
    }
    let mut names = Vec::new();
    for _ in 0..an {
        c.skip_name().ok_or(Answer::Failed)?;
        let ty = c.u16().ok_or(Answer::Failed)?;
        c.skip(6).ok_or(Answer::Failed)?; // Class, TTL.
        let len = usize::from(c.u16().ok_or(Answer::Failed)?);
        let start = c.pos;
        c.skip(len).ok_or(Answer::Failed)?;
        if ty == TYPE_PTR {
            let name = read_name(packet, start).ok_or(Answer::Failed)?;
            names.push(name.trim_end_matches('.').to_owned());
        }
    }
    if names.is_empty() {
        Err(Answer::NoData)
    } else {
        Ok(names)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.pos.checked_add(n)?;
        (end <= self.buf.len()).then(|| self.pos = end)
    }

    /// Skips a possibly compressed name (a pointer ends it; we never follow pointers).
    fn skip_name(&mut self) -> Option<()> {
        for _ in 0..128 {
            let len = self.u8()?;
            match len {
                0 => return Some(()),
                l if l & 0xc0 == 0xc0 => return self.skip(1),
                l if l & 0xc0 == 0 => self.skip(usize::from(l))?,
                _ => return None,
            }
        }
        None
    }
}

/// Parses the answer to the query with id `id`.
#[must_use]
pub fn parse_a(id: u16, packet: &[u8]) -> Answer {
    parse(id, packet).unwrap_or(Answer::Failed)
}

fn parse(id: u16, packet: &[u8]) -> Option<Answer> {
    let mut c = Cursor {
        buf: packet,
        pos: 0,
    };
    if c.u16()? != id {
        return None;
    }
    let flags = c.u16()?;
    if flags & 0x8000 == 0 {
        return None; // Not a response.
    }
    match flags & 0x000f {
        0 => {}
        3 => return Some(Answer::NoName),
        _ => return Some(Answer::Failed),
    }
    let (qd, an) = (c.u16()?, c.u16()?);
    c.skip(4)?; // NSCOUNT, ARCOUNT.
    for _ in 0..qd {
        c.skip_name()?;
        c.skip(4)?;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        c.skip_name()?;
        let (ty, class) = (c.u16()?, c.u16()?);
        c.skip(4)?; // TTL.
        let len = usize::from(c.u16()?);
        let start = c.pos;
        c.skip(len)?;
        if ty == TYPE_A && class == CLASS_IN && len == 4 {
            out.push(Ipv4Addr::new(
                packet[start],
                packet[start + 1],
                packet[start + 2],
                packet[start + 3],
            ));
        }
    }
    Some(if out.is_empty() {
        Answer::NoData
    } else {
        Answer::Addresses(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: u16, rcode: u8, answers: &[[u8; 4]]) -> Vec<u8> {
        let q = query_a(id, "v6only.outsock.test").unwrap();
        let mut p = q.clone();
        p[2] = 0x81;
        p[3] = 0x80 | rcode;
        p[7] = u8::try_from(answers.len()).unwrap();
        // A CNAME first (must be skipped), then the A records, all with compressed names.
        p[7] += 1;
        p.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 30, 0, 2, 0xc0, 12]);
        for a in answers {
            p.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 2, 88, 0, 4]);
            p.extend_from_slice(a);
        }
        p
    }

    #[test]
    fn builds_a_well_formed_query() {
        let q = query_a(0x1234, "v6only.outsock.test.").unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 1, 0]);
        assert_eq!(&q[12..19], b"\x06v6only");
        assert_eq!(&q[q.len() - 5..], &[0, 0, 1, 0, 1]);
        assert_eq!(query_a(1, ""), None);
        assert_eq!(query_a(1, "a..b"), None);
        assert_eq!(query_a(1, &"x".repeat(64)), None);
    }

    #[test]
    fn parses_addresses_and_outcomes() {
        let p = answer(7, 0, &[[10, 170, 160, 2], [10, 170, 160, 3]]);
        assert_eq!(
            parse_a(7, &p),
            Answer::Addresses(vec![
                Ipv4Addr::new(10, 170, 160, 2),
                Ipv4Addr::new(10, 170, 160, 3)
            ])
        );
        assert_eq!(parse_a(7, &answer(7, 0, &[])), Answer::NoData);
        assert_eq!(parse_a(7, &answer(7, 3, &[])), Answer::NoName);
        assert_eq!(parse_a(7, &answer(7, 2, &[])), Answer::Failed);
        assert_eq!(parse_a(8, &p), Answer::Failed, "wrong id");
    }

    #[test]
    fn parses_ptr_names_through_compression_and_rejects_loops() {
        let q = query(
            9,
            &reverse_name(Ipv4Addr::new(10, 170, 160, 2)),
            TYPE_PTR,
            CLASS_IN,
        )
        .unwrap();
        assert_eq!(&q[12..14], b"\x012");
        let mut p = q.clone();
        p[2] = 0x81;
        p[3] = 0x80;
        p[7] = 1;
        // One PTR record whose owner is a pointer to the question and whose rdata is a name.
        let rdata_at = p.len() + 12;
        p.extend_from_slice(&[0xc0, 12, 0, 12, 0, 1, 0, 0, 0, 60, 0, 21]);
        p.extend_from_slice(b"\x06v6only\x07outsock\x04test\x00");
        assert_eq!(p.len(), rdata_at + 21);
        assert_eq!(parse_ptr(9, &p), Ok(vec!["v6only.outsock.test".to_owned()]));
        assert_eq!(parse_ptr(10, &p), Err(Answer::Failed), "wrong id");
        // A pointer to itself is a loop: an error, not a hang.
        let mut looped = p.clone();
        looped[rdata_at] = 0xc0;
        looped[rdata_at + 1] = u8::try_from(rdata_at).unwrap();
        assert_eq!(parse_ptr(9, &looped), Err(Answer::Failed));
        for cut in 0..p.len() {
            assert!(parse_ptr(9, &p[..cut]).is_err(), "cut at {cut}");
        }
        let mut nx = q.clone();
        nx[2] = 0x81;
        nx[3] = 0x83;
        assert_eq!(parse_ptr(9, &nx), Err(Answer::NoName));
    }

    #[test]
    fn truncated_answers_fail_without_panicking() {
        let p = answer(7, 0, &[[10, 170, 160, 2]]);
        for cut in 0..p.len() {
            assert_eq!(parse_a(7, &p[..cut]), Answer::Failed, "cut at {cut}");
        }
    }
}
