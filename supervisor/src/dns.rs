//! DNS for programs with their own resolver (static glibc, musl, Go): the program's UDP socket
//! connected to a resolv.conf nameserver on port 53 has become one end of an `AF_UNIX`
//! `SOCK_SEQPACKET` pair (one packet per datagram, and EOF when the program closes it); this
//! relay carries each query as a [`Datagram`] to the guest DNS address through a host-server
//! UDP association, whose packet channel brings the answers back, and writes each answer's
//! payload to the pair. The program reads it with read/recv, or with recvfrom, which the
//! supervisor answers with the nameserver's address (`serve`).

use std::io::{self, Read, Write};
use std::net::SocketAddrV4;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use shared_proto::outsource::Datagram;
use shared_proto::{decode_exact, to_vec, ToGuest, ToHost};

/// The largest packet either way: a DNS message over UDP, its frame header and address.
const MAX_PACKET: usize = 70 * 1024;

/// Starts the relay between `ours` (our end of the program's pair) and `channel` (the
/// association's packet channel) for queries to `server` (the guest DNS address). Two threads,
/// one per direction; both end when the program closes its end.
///
/// # Errors
/// When a descriptor cannot be duplicated or a thread cannot start (then neither runs on).
pub fn spawn_relay(ours: OwnedFd, channel: OwnedFd, server: SocketAddrV4) -> io::Result<()> {
    // std's UnixStream over SOCK_SEQPACKET descriptors: each read is one packet, each write
    // one packet, EOF is 0.
    let prog = UnixStream::from(ours);
    let chan = UnixStream::from(channel);
    let (prog2, chan2) = (prog.try_clone()?, chan.try_clone()?);
    // If the second thread cannot start, shutting the association down ends the first.
    let chan3 = chan.try_clone()?;
    std::thread::Builder::new().spawn(move || queries(prog, chan, server))?;
    if let Err(e) = std::thread::Builder::new().spawn(move || answers(chan2, prog2)) {
        let _ = chan3.shutdown(std::net::Shutdown::Both);
        return Err(e);
    }
    Ok(())
}

fn queries(mut prog: UnixStream, mut chan: UnixStream, server: SocketAddrV4) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let n = match prog.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let frame = ToHost::Datagram(Datagram {
            addr: server,
            payload: buf[..n].to_vec(),
        });
        let Ok(bytes) = to_vec(&frame) else { continue };
        if chan.write_all(&bytes).is_err() {
            break;
        }
    }
    // The program closed its socket: closing the association ends the other thread too.
    let _ = chan.shutdown(std::net::Shutdown::Both);
}

fn answers(mut chan: UnixStream, mut prog: UnixStream) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let n = match chan.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Ok(ToGuest::Datagram(d)) = decode_exact::<ToGuest>(&buf[..n]) {
            // A full pair holds this answer back until the program reads.
            if prog.write(&d.payload).is_err() {
                break;
            }
        }
    }
    let _ = prog.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::sys::seqpacket_pair;

    use super::*;

    #[test]
    fn each_query_is_one_datagram_and_each_answer_one_packet() {
        let server: SocketAddrV4 = "10.170.160.1:53".parse().unwrap();
        let (prog, ours) = seqpacket_pair().unwrap();
        let (host, channel) = seqpacket_pair().unwrap();
        spawn_relay(ours, channel, server).unwrap();
        let mut prog = UnixStream::from(prog);
        let mut host = UnixStream::from(host);

        for q in [&b"first query"[..], b"second"] {
            prog.write_all(q).unwrap();
            let mut buf = vec![0u8; MAX_PACKET];
            let n = host.read(&mut buf).unwrap();
            assert_eq!(
                decode_exact::<ToHost>(&buf[..n]).unwrap(),
                ToHost::Datagram(Datagram {
                    addr: server,
                    payload: q.to_vec()
                })
            );
        }
        for a in [&b"an answer"[..], b"another"] {
            let frame = to_vec(&ToGuest::Datagram(Datagram {
                addr: server,
                payload: a.to_vec(),
            }))
            .unwrap();
            host.write_all(&frame).unwrap();
        }
        let mut buf = [0u8; 64];
        let n = prog.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"an answer");
        let n = prog.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"another");

        // The program closes its socket: the association closes.
        drop(prog);
        let mut buf = [0u8; 16];
        assert_eq!(host.read(&mut buf).unwrap(), 0);
    }
}
