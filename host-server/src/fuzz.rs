//! The body of the `host_session` cargo-fuzz target (fuzz/, behind the `fuzzing` feature; the
//! unit tests replay its corpus on stable): a host.sock client's bytes, with descriptors it
//! attaches where host-server expects none, into the code that reads a stream.
//!
//! The seams are the real ones, on a real `AF_UNIX` stream pair and a current-thread runtime:
//! the opening (`session::read_opening`: shared-proto's frame reader, then the identity rules
//! for a VMM or a process peer), and, after a VM's UDP or ICMP request, the association's
//! stream channel (`assoc::Channel::Stream`, the leftover bytes chained before the stream)
//! read datagram by datagram as an association does; a process's packet channel
//! (`assoc::Channel::Packets`, `SOCK_SEQPACKET`) gets packets from the input too. What a
//! request then does (connect, listen, bind) is left out: it would reach the network.
//!
//! Properties beyond "never panics": the identity the opening yields is the peer's (a VMM's
//! stream is its own VM's, a process's its uid), a request is never a hello or a datagram, and
//! no descriptor is left open (one the client attached included; checked in the fuzzer's
//! process, not in the unit test, whose neighbours open descriptors meanwhile).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use shared_proto::outsource::ToHost;
use socket2::{Domain, Socket, Type};

use crate::assoc::Channel;
use crate::config::VmSettings;
use crate::framed::FrameReader;
use crate::identity::{Identity, PeerCred};
use crate::session::read_opening;

/// The uid of VM `vm0`'s VMM; `vm1`'s is the next one. Any other uid is a process.
const VMM_UID: u32 = 1000;
const PROCESS_UID: u32 = 2000;
/// At most this many bytes go into the stream (its buffer takes them without a reader).
const MAX_STREAM: usize = 64 * 1024;

/// The VMs host-server knows: made once (they are configuration, read and never changed).
fn vms() -> &'static BTreeMap<String, VmSettings> {
    static VMS: std::sync::OnceLock<BTreeMap<String, VmSettings>> = std::sync::OnceLock::new();
    VMS.get_or_init(vms_once)
}

fn vms_once() -> BTreeMap<String, VmSettings> {
    let mut vms = BTreeMap::new();
    for (i, name) in ["vm0", "vm1"].into_iter().enumerate() {
        let uid = VMM_UID + u32::try_from(i).unwrap_or(0);
        vms.insert(
            name.to_owned(),
            VmSettings::new(
                format!("/run/outsock/{name}.vsock"),
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10 + uid as u16),
                uid,
            ),
        );
    }
    vms
}

/// A descriptor the client attaches, chosen by `pick`.
fn some_fd(pick: u8) -> Option<OwnedFd> {
    match pick % 3 {
        0 => rustix::pipe::pipe().ok().map(|(r, _w)| r),
        1 => Socket::pair(Domain::UNIX, Type::STREAM, None)
            .ok()
            .map(|(a, _b)| OwnedFd::from(a)),
        _ => std::fs::File::open("/dev/null").ok().map(OwnedFd::from),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// The target's body. `data`: a byte choosing the peer (bit 0: VM `vm0`'s VMM, else a
/// process), then operations, each a tag byte and a length-prefixed (u16, little endian) body:
/// tag % 4 = 0, the body written to the stream; 1, written with a descriptor attached
/// (SCM_RIGHTS; the body's first byte picks a pipe, a socket or a file); 2, the body sent as one
/// packet on a process's association channel; 3, the client shuts its writing side (the rest
/// of the input is not sent).
pub fn session_one(data: &[u8]) {
    let Some((&who, rest)) = data.split_first() else {
        return;
    };
    runtime();
    let fds_before = open_fds();
    run(who, rest);
    // Under `cargo test` other tests open descriptors at the same time: the fuzzer checks.
    if cfg!(not(test)) {
        assert_eq!(open_fds(), fds_before, "a descriptor leaked");
    }
}

/// Descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fn run(who: u8, mut rest: &[u8]) {
    let rt = runtime();
    let vms = vms();
    let cred = PeerCred {
        uid: if who & 1 != 0 { VMM_UID } else { PROCESS_UID },
        gid: 100,
        pid: Some(4242),
    };
    let Ok((server, mut client)) = std::os::unix::net::UnixStream::pair() else {
        return;
    };
    let Ok((packets_host, packets_guest)) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None)
    else {
        return;
    };
    let _ = client.set_nonblocking(true);
    let _ = packets_guest.set_nonblocking(true);
    let mut sent = 0;
    let mut packets = 0;
    while let [tag, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        if sent + body.len() > MAX_STREAM && tag % 4 != 2 {
            break;
        }
        match tag % 4 {
            0 => sent += client.write(body).unwrap_or(0),
            1 => {
                let Some(fd) = some_fd(body.first().copied().unwrap_or(0)) else {
                    continue;
                };
                sent += outsock_fdpass::sendmsg_fd::<outsock_fdpass::Libc>(
                    client.as_raw_fd(),
                    body,
                    fd.as_raw_fd(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
                .unwrap_or(0);
            }
            2 => {
                if packets_guest.send(body).is_ok() {
                    packets += 1;
                }
            }
            _ => break,
        }
    }
    // The client has said all it will: the server reads to the end of the stream, never waits.
    let _ = client.shutdown(std::net::Shutdown::Write);
    drop(packets_guest);
    rt.block_on(async {
        let work = async {
            let _ = server.set_nonblocking(true);
            let Ok(stream) = tokio::net::UnixStream::from_std(server) else {
                return;
            };
            let mut reader = FrameReader::new();
            let mut passed = None;
            if let Ok(opened) =
                read_opening(&stream, &mut reader, &mut passed, cred, None, vms).await
            {
                assert!(!matches!(
                    opened.request,
                    ToHost::Hello(_) | ToHost::Datagram(_) | ToHost::Ended
                ));
                match (&opened.identity, &opened.hello) {
                    (Identity::Vm(name), Some(h)) => {
                        assert_eq!(&h.vm, name);
                        assert_eq!(vms[name].vmm_uid, cred.uid, "a VMM claims only its VM");
                    }
                    (Identity::Process { uid }, None) => {
                        assert_eq!(*uid, cred.uid);
                        assert!(
                            cred.uid != VMM_UID || matches!(opened.request, ToHost::ListVms),
                            "a VMM's request without a hello"
                        );
                    }
                    other => panic!("identity {other:?} from uid {}", cred.uid),
                }
                if matches!(opened.request, ToHost::Udp(_) | ToHost::Icmp(_))
                    && matches!(opened.identity, Identity::Vm(_))
                {
                    let mut channel = Channel::Stream {
                        stream,
                        pre: std::io::Cursor::new(reader.into_leftover()),
                        reader: FrameReader::new(),
                    };
                    while channel.next_datagram().await.is_some() {}
                }
            }
            let std = std::os::unix::net::UnixStream::from(OwnedFd::from(packets_host));
            let _ = std.set_nonblocking(true);
            let Ok(sock) = tokio::net::UnixStream::from_std(std) else {
                return;
            };
            let mut channel = Channel::Packets {
                sock,
                buf: vec![0; crate::assoc::MAX_PACKET],
            };
            for _ in 0..packets {
                if channel.read().await.is_err() {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .expect("the stream is read to its end within 10 s");
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// fuzz/corpus/host_session replayed on stable.
    #[test]
    fn host_session_corpus_replays_without_panic() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/host_session");
        let mut n = 0;
        for f in std::fs::read_dir(&dir).expect("corpus directory") {
            session_one(&std::fs::read(f.expect("entry").path()).expect("corpus file"));
            n += 1;
        }
        assert!(n >= 3, "only {n} inputs in {}", dir.display());
    }
}
