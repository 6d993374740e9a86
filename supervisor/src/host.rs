//! The supervisor's client of host-server: one request frame on a stream, one answer frame read
//! to its last byte and no further (a relayed stream's later bytes belong to the program), with
//! the descriptor host-server passes alongside (SCM_RIGHTS). The stream is a Unix stream to
//! host-server's socket (process mode) or, inside a VM, an `AF_VSOCK` stream to the host that
//! the VMM bridges to host-server ([`HostServer::over_vsock`]); over vsock nothing is passed, so
//! connects are relayed.
//!
//! In process mode a stream on which host-server passed a socket while connecting stays open
//! for the next request (host-server keeps such a stream, see its `session`): up to [`KEPT`]
//! of them wait here, so a connect costs no new stream, accept and credentials check. A kept
//! stream host-server has closed meanwhile (idle past its request timeout, or restarted) is
//! seen readable and dropped before use, and one that ends before any byte of the answer —
//! host-server closed it as the request went — is asked again on a new stream (host-server
//! reads nothing from a stream it closes idle, so the request was not carried out).

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shared_proto::frame::{frame_len, HEADER_LEN};
use shared_proto::{decode_exact, to_vec, Errno, ToGuest, ToHost};

/// How long an answer may take (host-server's own connect timeout is shorter), as in the shim.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

static WARNED: AtomicBool = AtomicBool::new(false);

/// The most streams kept for later requests.
const KEPT: usize = 2;

/// host-server at its socket path.
#[derive(Debug, Clone)]
pub struct HostServer {
    path: PathBuf,
    /// Inside a VM: the host's vsock port instead of `path`.
    vsock: Option<u32>,
    /// Streams host-server keeps open for a next request (process mode).
    kept: Arc<Mutex<Vec<UnixStream>>>,
}

/// An answer: the stream it came on, the frame, and the descriptor passed with it.
#[derive(Debug)]
pub struct Answer {
    pub stream: UnixStream,
    pub msg: ToGuest,
    pub passed: Option<OwnedFd>,
}

impl HostServer {
    #[must_use]
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            vsock: None,
            kept: Arc::default(),
        }
    }

    /// The same host-server reached over vsock `port` of the host (inside a VM), when given.
    #[must_use]
    pub fn over_vsock(self, port: Option<u32>) -> Self {
        Self {
            vsock: port,
            ..self
        }
    }

    /// Whether host-server can pass descriptors back (process mode): inside a VM it relays on
    /// the request's stream instead.
    #[must_use]
    pub fn passes_fds(&self) -> bool {
        self.vsock.is_none()
    }

    /// A new stream to host-server. A vsock stream is held as a `UnixStream` too: only the
    /// family-independent calls (read, write, SO_RCVTIMEO, recvmsg) are made on it.
    fn open(&self) -> io::Result<UnixStream> {
        match self.vsock {
            Some(port) => {
                crate::sys::vsock_connect(crate::transport::HOST_CID, port).map(UnixStream::from)
            }
            None => UnixStream::connect(&self.path),
        }
    }

    fn place(&self) -> String {
        match self.vsock {
            Some(port) => format!("vsock port {port} of the host"),
            None => self.path.display().to_string(),
        }
    }

    /// Sends `req` on a new stream and reads the answer. Errors are what the program's call
    /// fails with: ENETUNREACH when host-server is unreachable (one line on stderr, once, as
    /// the shim says it), ETIMEDOUT when it does not answer, EPROTO for a garbled answer.
    ///
    /// # Errors
    /// The errno for the program.
    pub fn request(&self, req: &ToHost) -> Result<Answer, Errno> {
        self.send(req)?.answer(self)
    }

    /// Keeps `stream` for a later request: one on which host-server passed a socket while
    /// connecting (it keeps its end open), the answer read to its end.
    pub fn keep(&self, stream: UnixStream) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < KEPT {
            kept.push(stream);
        }
    }

    /// A kept stream with `frame` written on it, if one is still open.
    fn reuse(&self, frame: &[u8]) -> Option<UnixStream> {
        loop {
            let stream = self
                .kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            // Anything to read on a stream between requests is its end (or garbage): dropped.
            if crate::sys::wait_readable(stream.as_raw_fd(), 0) {
                continue;
            }
            if (&stream).write_all(frame).is_ok() {
                return Some(stream);
            }
        }
    }

    /// A new stream with `frame` written on it.
    fn fresh(&self, frame: &[u8]) -> Result<UnixStream, Errno> {
        let stream = self.open().map_err(|e| {
            if !WARNED.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "outsock: host-server is unreachable at {}: {e}",
                    self.place()
                );
            }
            Errno::ENETUNREACH
        })?;
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|_| Errno::EPROTO)?;
        (&stream).write_all(frame).map_err(|_| Errno::EPROTO)?;
        Ok(stream)
    }

    /// [`HostServer::request`] on a new stream, with `fd` attached to the request (SCM_RIGHTS,
    /// on its first byte): a listen request's packet channel.
    ///
    /// # Errors
    /// As for [`HostServer::request`].
    pub fn request_with_fd(&self, req: &ToHost, fd: std::os::fd::RawFd) -> Result<Answer, Errno> {
        let frame = to_vec(req).map_err(|_| Errno::EPROTO)?;
        let stream = self.fresh(&[])?;
        let n = outsock_fdpass::sendmsg_fd::<outsock_fdpass::Libc>(
            stream.as_raw_fd(),
            &frame,
            fd,
            libc::MSG_NOSIGNAL,
        )
        .map_err(|_| Errno::EPROTO)?;
        (&stream)
            .write_all(&frame[n..])
            .map_err(|_| Errno::EPROTO)?;
        Pending {
            stream,
            again: None,
        }
        .answer(self)
    }

    /// Sends `req` on a new stream; the answer is read by [`Pending::answer`]. Errors as for
    /// [`HostServer::request`].
    ///
    /// # Errors
    /// The errno for the program.
    pub fn send(&self, req: &ToHost) -> Result<Pending, Errno> {
        let frame = to_vec(req).map_err(|_| Errno::EPROTO)?;
        if self.passes_fds() {
            if let Some(stream) = self.reuse(&frame) {
                return Ok(Pending {
                    stream,
                    again: Some(frame),
                });
            }
        }
        Ok(Pending {
            stream: self.fresh(&frame)?,
            again: None,
        })
    }
}

/// A request sent, its answer not read yet.
#[derive(Debug)]
pub struct Pending {
    stream: UnixStream,
    /// On a kept stream: the request, to ask again on a new stream if the kept one ends first.
    again: Option<Vec<u8>>,
}

impl Pending {
    /// Whether the answer has begun to arrive (or the stream ended) within `ms` milliseconds.
    #[must_use]
    pub fn ready_within(&self, ms: i32) -> bool {
        crate::sys::wait_readable(self.stream.as_raw_fd(), ms)
    }

    /// Reads the answer (waiting for it up to the answer timeout).
    ///
    /// # Errors
    /// As for [`HostServer::request`].
    pub fn answer(self, host: &HostServer) -> Result<Answer, Errno> {
        let (stream, (msg, passed)) = match (read_answer(&self.stream), self.again) {
            (Ok(a), _) => (self.stream, a),
            (Err(End::Closed), Some(frame)) => {
                let stream = host.fresh(&frame)?;
                let a = read_answer(&stream).map_err(End::errno)?;
                (stream, a)
            }
            (Err(e), _) => return Err(e.errno()),
        };
        // The answer timeout must not outlive the request on a stream that becomes the
        // program's socket (relayed); one that only brought a socket may be kept, timeout and all.
        if passed.is_none() {
            stream.set_read_timeout(None).map_err(|_| Errno::EPROTO)?;
        }
        Ok(Answer {
            stream,
            msg,
            passed,
        })
    }
}

/// How reading an answer failed.
enum End {
    /// The stream ended (or was reset) before the answer's first byte.
    Closed,
    /// Any other failure: the errno for the program.
    Failed(Errno),
}

impl End {
    fn errno(self) -> Errno {
        match self {
            End::Closed => Errno::EPROTO,
            End::Failed(e) => e,
        }
    }
}

/// [`read_frame`], telling an end before the first byte apart.
fn read_answer(stream: &UnixStream) -> Result<(ToGuest, Option<OwnedFd>), End> {
    read_answer_fd(stream.as_raw_fd())
}

/// [`read_frame`] on a stream held as a bare descriptor (an association's channel in a VM).
///
/// # Errors
/// As [`read_frame`].
pub fn read_frame_fd(fd: std::os::fd::RawFd) -> Result<(ToGuest, Option<OwnedFd>), Errno> {
    read_answer_fd(fd).map_err(End::errno)
}

fn read_answer_fd(fd: std::os::fd::RawFd) -> Result<(ToGuest, Option<OwnedFd>), End> {
    let mut first = [0u8; 1];
    let mut passed = match outsock_fdpass::recv_with_fd(fd, &mut first) {
        Ok((0, _)) => return Err(End::Closed),
        Ok((_, fd)) => fd,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(End::Closed),
        Err(e) => return Err(End::Failed(recv_errno(&e))),
    };
    let mut buf = vec![0u8; HEADER_LEN];
    buf[0] = first[0];
    read_exact_with_fd(fd, &mut buf[1..], &mut passed).map_err(End::Failed)?;
    let Ok(Some(total)) = frame_len(&buf) else {
        return Err(End::Failed(Errno::EPROTO));
    };
    buf.resize(total, 0);
    read_exact_with_fd(fd, &mut buf[HEADER_LEN..], &mut passed).map_err(End::Failed)?;
    let msg = decode_exact::<ToGuest>(&buf).map_err(|_| End::Failed(Errno::EPROTO))?;
    Ok((msg, passed))
}

fn recv_errno(e: &io::Error) -> Errno {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Errno::ETIMEDOUT,
        _ => Errno::EPROTO,
    }
}

/// Reads one whole frame from `stream` and no byte further, with the descriptor passed
/// alongside, if any (a VM listener's inbound stream begins with its `Inbound` frame too).
///
/// # Errors
/// ETIMEDOUT when the read timed out, EPROTO for a garbled frame or an early end.
pub fn read_frame(stream: &UnixStream) -> Result<(ToGuest, Option<OwnedFd>), Errno> {
    read_answer(stream).map_err(End::errno)
}

fn read_exact_with_fd(
    fd: std::os::fd::RawFd,
    mut buf: &mut [u8],
    passed: &mut Option<OwnedFd>,
) -> Result<(), Errno> {
    while !buf.is_empty() {
        let (n, fd) = outsock_fdpass::recv_with_fd(fd, buf).map_err(|e| recv_errno(&e))?;
        if passed.is_none() {
            *passed = fd;
        }
        if n == 0 {
            return Err(Errno::EPROTO);
        }
        buf = &mut buf[n..];
    }
    Ok(())
}

/// Whether host-server's refusal `e` passes (host-server starting up, a limit of the moment), so
/// that registering a listener or an association again is worth retrying later.
pub(crate) fn passing(e: Errno) -> bool {
    [
        Errno::EAGAIN,
        Errno::ETIMEDOUT,
        Errno::ENOBUFS,
        Errno::EMFILE,
    ]
    .iter()
    .any(|t| t.0 == e.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    use shared_proto::translate::connect_request;
    use shared_proto::{decode, outsource::ConnectRequest};

    use super::*;

    #[test]
    fn one_answer_frame_is_read_with_its_descriptor_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let dest = "10.170.160.2:80".parse().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let req = read_request(&mut c);
            let keep = answer_with_fd(&c, dest);
            c.write_all(b"data path").unwrap();
            (req, keep)
        });
        let a = HostServer::new(path)
            .request(&connect_request(dest, true, true))
            .unwrap();
        let (req, _keep) = server.join().unwrap();
        assert_eq!(
            req,
            ToHost::Connect(ConnectRequest {
                dest,
                pass_fd: true,
                nonblocking: true
            })
        );
        assert!(matches!(a.msg, ToGuest::Connected { peer, .. } if peer == dest));
        assert!(a.passed.is_some());
        // What follows the frame is left for the program.
        let mut rest = [0u8; 9];
        (&a.stream).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"data path");
    }

    /// Answers `req` on `c` with a `Connected` frame and a descriptor.
    fn answer_with_fd(c: &UnixStream, dest: std::net::SocketAddrV4) -> UnixStream {
        let answer = to_vec(&ToGuest::Connected {
            local: "0.0.0.0:4000".parse().unwrap(),
            peer: dest,
            fd_passed: true,
            in_progress: true,
        })
        .unwrap();
        let (passed, keep) = UnixStream::pair().unwrap();
        outsock_fdpass::sendmsg_fd::<outsock_fdpass::Libc>(
            c.as_raw_fd(),
            &answer,
            passed.as_raw_fd(),
            0,
        )
        .unwrap();
        keep
    }

    fn read_request(c: &mut UnixStream) -> ToHost {
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 64];
            let n = c.read(&mut chunk).unwrap();
            assert!(n > 0, "the stream ended before a request");
            buf.extend_from_slice(&chunk[..n]);
            if let Some((m, _)) = decode::<ToHost>(&buf).unwrap() {
                return m;
            }
        }
    }

    /// A kept stream is used again; one that ended meanwhile is dropped unused, and one that
    /// ends before the answer's first byte has its request asked again on a new stream.
    #[test]
    fn kept_streams_are_reused_and_a_closed_one_is_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let dest = "10.170.160.2:80".parse().unwrap();
        let server = std::thread::spawn(move || {
            let mut keep = Vec::new();
            // Stream 1: two requests answered, then it is closed unasked.
            let (mut c, _) = listener.accept().unwrap();
            for _ in 0..2 {
                read_request(&mut c);
                keep.push(answer_with_fd(&c, dest));
            }
            drop(c);
            // Stream 2 (new, since 1 ended): answered; then it reads the next request and
            // closes without answering, as a host-server gone at that moment.
            let (mut c, _) = listener.accept().unwrap();
            read_request(&mut c);
            keep.push(answer_with_fd(&c, dest));
            read_request(&mut c);
            drop(c);
            // Stream 3: the same request, asked again.
            let (mut c, _) = listener.accept().unwrap();
            let again = read_request(&mut c);
            keep.push(answer_with_fd(&c, dest));
            (again, keep)
        });
        let h = HostServer::new(path);
        let ask = || {
            let a = h.request(&connect_request(dest, true, true)).unwrap();
            assert!(a.passed.is_some());
            h.keep(a.stream);
        };
        ask();
        ask();
        // Stream 1 has ended by now: wait until that shows, then the next ask opens stream 2.
        std::thread::sleep(std::time::Duration::from_millis(200));
        ask();
        ask();
        let (again, _keep) = server.join().unwrap();
        assert_eq!(again, connect_request(dest, true, true));
    }

    #[test]
    fn an_unreachable_host_server_is_enetunreach() {
        let dir = tempfile::tempdir().unwrap();
        let h = HostServer::new(dir.path().join("absent.sock"));
        let r = h.request(&connect_request("10.0.0.2:80".parse().unwrap(), true, true));
        assert_eq!(r.err(), Some(Errno::ENETUNREACH));
    }
}
