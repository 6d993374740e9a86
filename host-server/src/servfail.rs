//! The SERVFAIL answer host-server gives a guest DNS query itself when dns-cache cannot answer
//! it (dns-cache restarting, or its per-user limit of look-ups in flight): a resolver then moves
//! on at once instead of waiting out its timeout (5 s in glibc) for an answer that never comes.
//! The question is echoed, because resolvers (glibc's `res_queriesmatch`) ignore an answer
//! whose question differs from theirs.

/// SERVFAIL for `query`, or none if it is not a well-formed DNS query with one question.
pub(crate) fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    const HEADER: usize = 12;
    let header = query.get(..HEADER)?;
    // A query (QR clear), opcode QUERY, exactly one question.
    if header[2] & 0xf8 != 0 || header[4..6] != [0, 1] {
        return None;
    }
    // The question's name: labels up to the root, no compression (a query has nothing to point
    // back to), then type and class.
    let mut at = HEADER;
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        at += 1 + len;
    }
    let end = at.checked_add(4)?;
    let question = query.get(HEADER..end)?;
    let mut out = Vec::with_capacity(end);
    out.extend_from_slice(&header[..2]);
    // QR, the query's RD; RA (the guest DNS recurses); RCODE 2.
    out.push(0x80 | (header[2] & 0x01));
    out.push(0x80 | 0x02);
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(question);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::servfail;

    /// A query for `example.test A` with id 0xbeef and RD set.
    fn query() -> Vec<u8> {
        let mut q = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x07example\x04test\x00\x00\x01\x00\x01");
        q
    }

    #[test]
    fn echoes_id_question_and_rd_with_rcode_servfail() {
        let q = query();
        let a = servfail(&q).unwrap();
        assert_eq!(&a[..2], &[0xbe, 0xef]);
        assert_eq!(a[2], 0x81, "QR and RD");
        assert_eq!(a[3] & 0x0f, 2, "SERVFAIL");
        assert_eq!(&a[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&a[12..], &q[12..], "the question, byte for byte");
        // Anything after the question (an OPT record) is not echoed.
        let mut with_opt = q.clone();
        with_opt[11] = 1;
        with_opt.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(servfail(&with_opt).unwrap()[12..], q[12..]);
    }

    #[test]
    fn refuses_what_is_not_a_one_question_query() {
        let q = query();
        assert_eq!(servfail(&q[..11]), None, "short header");
        assert_eq!(servfail(&q[..q.len() - 1]), None, "cut question");
        let mut answer = q.clone();
        answer[2] |= 0x80;
        assert_eq!(servfail(&answer), None, "a response");
        let mut two = q.clone();
        two[5] = 2;
        assert_eq!(servfail(&two), None, "two questions");
        let mut pointer = q.clone();
        pointer[12] = 0xc0;
        assert_eq!(servfail(&pointer), None, "a compression pointer");
        // Never panics on any prefix.
        for n in 0..q.len() {
            let _ = servfail(&q[..n]);
        }
    }
}
