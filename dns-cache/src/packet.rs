//! A minimal reader for the one shape of DNS request the hot path serves from bytes: a standard
//! query with one uncompressed question and at most an OPT record (RFC 1035 §4.1, RFC 6891 §6).
//!
//! It does no I/O and allocates nothing. Anything else (other opcodes, several questions,
//! compression, other additional records, trailing bytes, EDNS versions above 0) is not an
//! error here: [`QueryView::parse`] returns `None` and the caller takes the full path through
//! hickory's parser, which decides what the answer is (FORMERR, BADVERS, ...).

/// Offset of the question section: right after the 12-byte header.
pub const QUESTION_AT: usize = 12;

/// The longest wire form of a name (RFC 1035 §3.1).
pub const MAX_NAME: usize = 255;

/// Record type of the OPT pseudo-record.
const OPT: u16 = 41;

/// The RD bit in byte 2 (the first flags byte) of the header.
pub const RD_BIT: u8 = 0x01;

/// The EDNS part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdnsView {
    /// The requester's UDP payload size.
    pub payload: u16,
    /// The DO bit.
    pub dnssec_ok: bool,
}

/// A plain query, borrowed from the packet it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryView<'a> {
    /// Message id.
    pub id: u16,
    /// RD bit.
    pub recursion_desired: bool,
    /// CD bit.
    pub checking_disabled: bool,
    /// The question name in wire form, as sent (case kept), root label included.
    pub qname: &'a [u8],
    /// Question type.
    pub qtype: u16,
    /// Question class.
    pub qclass: u16,
    /// The OPT record, when there is one (version 0 only).
    pub edns: Option<EdnsView>,
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

impl<'a> QueryView<'a> {
    /// Reads `packet` if it has the plain shape; `None` otherwise.
    pub fn parse(packet: &'a [u8]) -> Option<Self> {
        let id = u16_at(packet, 0)?;
        let flags = u16_at(packet, 2)?;
        // QR must be 0 (a query) and OPCODE 0 (QUERY).
        if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 {
            return None;
        }
        let counts = (
            u16_at(packet, 4)?,
            u16_at(packet, 6)?,
            u16_at(packet, 8)?,
            u16_at(packet, 10)?,
        );
        let (1, 0, 0, additional @ (0 | 1)) = counts else {
            return None;
        };
        let mut at = QUESTION_AT;
        loop {
            let len = usize::from(*packet.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            // 0b11 is a compression pointer, 0b01/0b10 are reserved label types.
            if len > 63 {
                return None;
            }
            at += len;
            if at - QUESTION_AT > MAX_NAME {
                return None;
            }
        }
        let qname = packet.get(QUESTION_AT..at)?;
        if qname.len() > MAX_NAME {
            return None;
        }
        let qtype = u16_at(packet, at)?;
        let qclass = u16_at(packet, at + 2)?;
        at += 4;
        let edns = if additional == 1 {
            // Root owner name, type OPT, class = payload, TTL = ext-rcode, version, flags.
            if *packet.get(at)? != 0 || u16_at(packet, at + 1)? != OPT {
                return None;
            }
            let payload = u16_at(packet, at + 3)?;
            let version = *packet.get(at + 6)?;
            let eflags = u16_at(packet, at + 7)?;
            let rdlen = usize::from(u16_at(packet, at + 9)?);
            if version != 0 {
                return None;
            }
            at += 11 + rdlen;
            Some(EdnsView {
                payload,
                dnssec_ok: eflags & 0x8000 != 0,
            })
        } else {
            None
        };
        if at != packet.len() {
            return None;
        }
        Some(Self {
            id,
            recursion_desired: flags & 0x0100 != 0,
            checking_disabled: flags & 0x0010 != 0,
            qname,
            qtype,
            qclass,
            edns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{DNSClass, Name, RecordType};
    use proptest::prelude::*;

    fn query(name: &str, qtype: RecordType, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some((payload, dnssec_ok)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn reads_a_plain_query_with_and_without_edns() {
        let p = query("V6only.Test.", RecordType::A, None);
        let v = QueryView::parse(&p).unwrap();
        assert_eq!(v.id, 0xbeef);
        assert!(v.recursion_desired && !v.checking_disabled);
        assert_eq!(v.qname, b"\x06V6only\x04Test\x00");
        assert_eq!((v.qtype, v.qclass), (1, 1));
        assert_eq!(v.edns, None);
        let p = query("x.test.", RecordType::AAAA, Some((1232, true)));
        let v = QueryView::parse(&p).unwrap();
        assert_eq!(
            v.edns,
            Some(EdnsView {
                payload: 1232,
                dnssec_ok: true
            })
        );
    }

    #[test]
    fn leaves_everything_else_to_the_full_parser() {
        let good = query("a.test.", RecordType::A, None);
        let mut response = good.clone();
        response[2] |= 0x80;
        let mut notify = good.clone();
        notify[2] |= 4 << 3;
        let mut two = good.clone();
        two[5] = 2;
        let mut trailing = good.clone();
        trailing.push(0);
        let mut pointer = good[..12].to_vec();
        pointer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let mut v1 = query("a.test.", RecordType::A, Some((1232, false)));
        let at = v1.len() - 5; // the version byte of the OPT TTL
        v1[at] = 1;
        for bad in [
            &good[..11],
            &good[..good.len() - 1],
            &response,
            &notify,
            &two,
            &trailing,
            &pointer,
            &v1,
        ] {
            assert_eq!(QueryView::parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        /// Whatever it accepts, hickory reads the same way.
        #[test]
        fn agrees_with_hickory(
            labels in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 0..4),
            qtype in any::<u16>(),
            edns in proptest::option::of((512u16.., any::<bool>())),
            cd in any::<bool>(),
        ) {
            let name = Name::from_labels(labels.iter().map(Vec::as_slice)).unwrap();
            let mut m = Message::new(7, MessageType::Query, OpCode::Query);
            m.metadata.checking_disabled = cd;
            m.add_query(Query::query(name, RecordType::from(qtype)));
            if let Some((payload, dnssec_ok)) = edns {
                let mut e = Edns::new();
                e.set_max_payload(payload);
                e.set_dnssec_ok(dnssec_ok);
                m.set_edns(e);
            }
            let bytes = m.to_vec().unwrap();
            let v = QueryView::parse(&bytes).unwrap();
            let h = Message::from_vec(&bytes).unwrap();
            let q = &h.queries[0];
            prop_assert_eq!(v.qtype, u16::from(q.query_type()));
            prop_assert_eq!(v.qclass, u16::from(DNSClass::IN));
            prop_assert_eq!(v.checking_disabled, h.metadata.checking_disabled);
            let mut wire = Vec::new();
            for l in q.name() {
                wire.push(u8::try_from(l.len()).unwrap());
                wire.extend_from_slice(l);
            }
            wire.push(0);
            prop_assert_eq!(v.qname, &wire[..]);
            prop_assert_eq!(
                v.edns.map(|e| (e.payload, e.dnssec_ok)),
                h.edns.as_ref().map(|e| (e.max_payload(), e.flags().dnssec_ok))
            );
        }

        /// Random bytes never panic it.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = QueryView::parse(&bytes);
        }
    }
}
