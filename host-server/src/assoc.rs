//! The channel between an association (UDP, `udp::associate`; ICMP echo, `icmp::associate`) and
//! its guest: one `Datagram` (or `EchoReply`) frame per datagram, either way.
//!
//! To a process the `Associated` answer carries, attached (SCM_RIGHTS), one end of a fresh
//! `AF_UNIX` `SOCK_SEQPACKET` pair, which the shim makes the program's fd; the request's stream
//! then closes. Invariant: **one datagram is one packet** — each frame is sent with one `send`
//! and received with one `recv`, whole or not at all. So any number of threads and processes
//! (after fork) may receive and send on the program's fd at once, blocking or not: each datagram
//! reaches exactly one reader, whole, with its own source address, and sends never interleave.
//! The association ends when every copy of the guest's end is closed (end of file here). A
//! process's UDP server may bring the pair's host end itself (`UdpRequest::channel`, see
//! `Channel::adopt`): then the answer goes without a descriptor and the request's stream
//! stays open while the association lives, so the supervisor's keeper can tell a host-server
//! that went away from an association that ended, and open it again on the same channel.
//!
//! A VM's association stays on its request stream (vsock through the VMM carries only streams):
//! frames follow each other on it, and the shim keeps each frame whole by letting one thread at
//! a time read or write a frame (`guest/shim/src/dgram.rs`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{recv, send, MsgFlags};
use shared_proto::frame::{self, HEADER_LEN, MAX_BODY};
use shared_proto::outsource::Datagram;
use shared_proto::{decode_exact, Errno, ProtoError, ToGuest, ToHost};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::UnixStream;

use crate::context::Shared;
use crate::framed::{write_frame, FrameError, FrameReader};
use crate::handover::send_answer_with_fd;
use crate::identity::late_frame_error;

/// The largest packet the guest may send: a whole frame of the largest body.
pub(crate) const MAX_PACKET: usize = HEADER_LEN + MAX_BODY;

/// An association's channel to its guest (see the module docs).
#[derive(Debug)]
pub(crate) enum Channel {
    /// A VM's request stream, with the bytes read after the request.
    Stream {
        stream: UnixStream,
        reader: FrameReader,
        pre: io::Cursor<Vec<u8>>,
    },
    /// The host's end of a process's packet channel, registered with tokio through `UnixStream`
    /// and used only through `async_io` with whole-packet `send`/`recv`.
    Packets { sock: UnixStream, buf: Vec<u8> },
}

/// A `SOCK_SEQPACKET` pair: (host's end, non-blocking and registered with tokio; guest's end).
fn packet_channel() -> io::Result<(UnixStream, Socket)> {
    let (ours, theirs) = Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
    ours.set_nonblocking(true)?;
    let ours = UnixStream::from_std(std::os::unix::net::UnixStream::from(ours))?;
    Ok((ours, theirs))
}

impl Channel {
    /// Answers the association's request with `answer` (`Associated`) and returns the channel:
    /// a packet channel passed with the answer when `packets` (a process), else the stream.
    /// `None` when the guest is gone (or the channel could not be made; the guest is told).
    pub(crate) async fn open(
        mut stream: UnixStream,
        leftover: Vec<u8>,
        answer: &ToGuest,
        packets: bool,
        shared: &Shared,
    ) -> Option<Self> {
        if !packets {
            write_frame(&mut stream, answer).await.ok()?;
            return Some(Self::Stream {
                stream,
                reader: FrameReader::new(),
                pre: io::Cursor::new(leftover),
            });
        }
        if !leftover.is_empty() {
            // The shim waits for the answer before its first datagram: nothing may follow.
            crate::context::refuse(&mut stream, shared_proto::Errno::EPROTO).await;
            return None;
        }
        let (ours, theirs) = match packet_channel() {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open an association's packet channel");
                crate::context::refuse(&mut stream, shared_proto::Errno::ENOBUFS).await;
                return None;
            }
        };
        send_answer_with_fd(&stream, answer, theirs.as_fd(), shared).await;
        Some(Self::Packets {
            sock: ours,
            buf: vec![0; MAX_PACKET],
        })
    }

    /// Answers a request that brought its own packet channel (a process's UDP server,
    /// `UdpRequest::channel`) with `answer`, without a descriptor: the channel is `host_end`,
    /// the host's end of the pair the requester made. Returns the channel and the request's
    /// stream, which the association holds open while it lives (see `UdpRequest::channel`).
    /// `None` when the guest is gone, sent anything after the request, or the end cannot be
    /// taken (the guest is told).
    pub(crate) async fn adopt(
        mut stream: UnixStream,
        leftover: &[u8],
        answer: &ToGuest,
        host_end: OwnedFd,
    ) -> Option<(Self, UnixStream)> {
        if !leftover.is_empty() {
            // The shim waits for the answer before its first datagram: nothing may follow.
            crate::context::refuse(&mut stream, shared_proto::Errno::EPROTO).await;
            return None;
        }
        let end = std::os::unix::net::UnixStream::from(host_end);
        let sock = match end
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(end))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take an association's packet channel");
                crate::context::refuse(&mut stream, shared_proto::Errno::ENOBUFS).await;
                return None;
            }
        };
        write_frame(&mut stream, answer).await.ok()?;
        Some((
            Self::Packets {
                sock,
                buf: vec![0; MAX_PACKET],
            },
            stream,
        ))
    }

    /// The guest's next frame. Cancel-safe: a stream's bytes stay buffered, and a packet is
    /// taken whole or not at all.
    ///
    /// # Errors
    /// [`FrameError::Closed`] when the guest closed its end; any other error means the channel
    /// is broken or the guest sent garbage.
    pub(crate) async fn read(&mut self) -> Result<ToHost, FrameError> {
        match self {
            Self::Stream {
                stream,
                reader,
                pre,
            } => {
                if usize::try_from(pre.position()).unwrap_or(usize::MAX) >= pre.get_ref().len() {
                    reader.read::<ToHost, _>(stream).await
                } else {
                    let mut chained = pre.chain(stream);
                    reader.read::<ToHost, _>(&mut chained).await
                }
            }
            Self::Packets { sock, buf } => {
                let n = sock
                    .async_io(Interest::READABLE, || {
                        recv(sock.as_raw_fd(), buf, MsgFlags::MSG_TRUNC).map_err(io::Error::from)
                    })
                    .await?;
                decode_packet(&buf[..], n)
            }
        }
    }

    /// The guest's next datagram. Anything else ends the association: a frame that does not
    /// belong there (or a malformed one) is answered with its errno first; `None` either way.
    pub(crate) async fn next_datagram(&mut self) -> Option<Datagram> {
        let errno = match self.read().await {
            Ok(ToHost::Datagram(d)) => return Some(d),
            Ok(other) => late_frame_error(&other).map_or(Errno::EPROTO, |e| e.errno()),
            Err(FrameError::Proto(_)) => Errno::EPROTO,
            Err(_) => return None,
        };
        let _ = self.write(&ToGuest::Failed(errno)).await;
        None
    }

    /// Sends one frame to the guest: on a packet channel, one packet.
    ///
    /// # Errors
    /// When the frame cannot be encoded or sent (the guest is gone).
    pub(crate) async fn write(&mut self, msg: &ToGuest) -> io::Result<()> {
        match self {
            Self::Stream { stream, .. } => write_frame(stream, msg).await,
            Self::Packets { sock, .. } => {
                let bytes = frame::to_vec(msg).map_err(io::Error::other)?;
                let n = sock
                    .async_io(Interest::WRITABLE, || {
                        send(sock.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL)
                            .map_err(io::Error::from)
                    })
                    .await?;
                if n == bytes.len() {
                    Ok(())
                } else {
                    Err(io::Error::from(io::ErrorKind::WriteZero))
                }
            }
        }
    }
}

/// The frame in a packet of `n` bytes (its real length: `recv` with `MSG_TRUNC`) read into
/// `buf`: 0 bytes is the guest's end closing, a packet longer than `buf` or not exactly one
/// frame is garbage.
fn decode_packet(buf: &[u8], n: usize) -> Result<ToHost, FrameError> {
    if n == 0 {
        return Err(FrameError::Closed);
    }
    if n > buf.len() {
        return Err(FrameError::Proto(ProtoError::TooLarge { len: n }));
    }
    Ok(decode_exact::<ToHost>(&buf[..n])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::outsource::Datagram;

    #[test]
    fn a_packet_is_exactly_one_frame() {
        let d = ToHost::Datagram(Datagram {
            addr: "10.170.160.5:53".parse().unwrap(),
            payload: b"query".to_vec(),
        });
        let bytes = shared_proto::to_vec(&d).unwrap();
        let mut buf = vec![0u8; 64];
        buf[..bytes.len()].copy_from_slice(&bytes);
        assert_eq!(decode_packet(&buf, bytes.len()).unwrap(), d);
        assert!(matches!(decode_packet(&buf, 0), Err(FrameError::Closed)));
        // A packet cut short, or with anything after its frame, is garbage.
        assert!(matches!(
            decode_packet(&buf, bytes.len() - 1),
            Err(FrameError::Proto(_))
        ));
        assert!(matches!(
            decode_packet(&buf, bytes.len() + 1),
            Err(FrameError::Proto(_))
        ));
        assert!(matches!(decode_packet(&buf, 65), Err(FrameError::Proto(_))));
    }
}
