//! The supervisor's client of host-server: one stream per request (exactly as liboutsock opens
//! one per socket), one request frame, one answer frame read to its last byte and no further (a
//! relayed stream's later bytes belong to the program), with the descriptor host-server passes
//! alongside (SCM_RIGHTS). The stream is a Unix stream to host-server's socket (process mode)
//! or, inside a VM, an `AF_VSOCK` stream to the host that the VMM bridges to host-server
//! ([`HostServer::over_vsock`]); over vsock nothing is passed, so connects are relayed.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shared_proto::frame::{frame_len, HEADER_LEN};
use shared_proto::{decode_exact, to_vec, Errno, ToGuest, ToHost};

/// How long an answer may take (host-server's own connect timeout is shorter), as in the shim.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

static WARNED: AtomicBool = AtomicBool::new(false);

/// host-server at its socket path.
#[derive(Debug, Clone)]
pub struct HostServer {
    path: PathBuf,
    /// Inside a VM: the host's vsock port instead of `path`.
    vsock: Option<u32>,
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
        Self { path, vsock: None }
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
        let stream = self.open().map_err(|e| {
            if !WARNED.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "outsock: host-server is unreachable at {}: {e}",
                    self.place()
                );
            }
            Errno::ENETUNREACH
        })?;
        let frame = to_vec(req).map_err(|_| Errno::EPROTO)?;
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|_| Errno::EPROTO)?;
        (&stream).write_all(&frame).map_err(|_| Errno::EPROTO)?;
        let (msg, passed) = read_frame(&stream)?;
        // The answer timeout must not outlive the request: a relayed stream becomes the
        // program's socket.
        stream.set_read_timeout(None).map_err(|_| Errno::EPROTO)?;
        Ok(Answer {
            stream,
            msg,
            passed,
        })
    }
}

/// Reads one whole frame from `stream` and no byte further, with the descriptor passed
/// alongside, if any (a VM listener's inbound stream begins with its `Inbound` frame too).
///
/// # Errors
/// ETIMEDOUT when the read timed out, EPROTO for a garbled frame or an early end.
pub fn read_frame(stream: &UnixStream) -> Result<(ToGuest, Option<OwnedFd>), Errno> {
    let mut buf = vec![0u8; HEADER_LEN];
    let mut passed = None;
    read_exact_with_fd(stream, &mut buf, &mut passed)?;
    let Ok(Some(total)) = frame_len(&buf) else {
        return Err(Errno::EPROTO);
    };
    buf.resize(total, 0);
    read_exact_with_fd(stream, &mut buf[HEADER_LEN..], &mut passed)?;
    let msg = decode_exact::<ToGuest>(&buf).map_err(|_| Errno::EPROTO)?;
    Ok((msg, passed))
}

fn read_exact_with_fd(
    stream: &UnixStream,
    mut buf: &mut [u8],
    passed: &mut Option<OwnedFd>,
) -> Result<(), Errno> {
    while !buf.is_empty() {
        let (n, fd) =
            outsock_fdpass::recv_with_fd(stream.as_raw_fd(), buf).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Errno::ETIMEDOUT,
                _ => Errno::EPROTO,
            })?;
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
            let mut buf = Vec::new();
            let req = loop {
                let mut chunk = [0u8; 64];
                let n = c.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Some((m, _)) = decode::<ToHost>(&buf).unwrap() {
                    break m;
                }
            };
            let answer = to_vec(&ToGuest::Connected {
                local: "10.0.0.1:4000".parse().unwrap(),
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

    #[test]
    fn an_unreachable_host_server_is_enetunreach() {
        let dir = tempfile::tempdir().unwrap();
        let h = HostServer::new(dir.path().join("absent.sock"));
        let r = h.request(&connect_request("10.0.0.2:80".parse().unwrap(), true, true));
        assert_eq!(r.err(), Some(Errno::ENETUNREACH));
    }
}
