//! Handing a host socket to a process: the answer frame and the socket travel in one message
//! (SCM_RIGHTS, see `fdpass`), so the process gets the descriptor with its answer. Shared by
//! outbound TCP (a socket connected or still connecting) and connected UDP.

use std::os::fd::BorrowedFd;

use shared_proto::{frame, ToGuest};
use tokio::net::UnixStream;

use crate::context::Shared;
use crate::metrics::Event;

/// Sends `answer` with `fd` attached and counts the pass; returns whether it went. A failure is
/// only logged (the peer is gone or its stream broken, and nobody is left to tell).
pub(crate) async fn send_answer_with_fd(
    stream: &UnixStream,
    answer: &ToGuest,
    fd: BorrowedFd<'_>,
    shared: &Shared,
) -> bool {
    let Ok(bytes) = frame::to_vec(answer) else {
        return false;
    };
    match crate::fdpass::send_with_fd(stream, &bytes, fd).await {
        Ok(()) => {
            shared.metrics.record(Event::FdPassed);
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not pass the socket");
            false
        }
    }
}

/// Sends `answer` with every socket of `fds` attached in one SCM_RIGHTS (a `Lent` answer);
/// returns whether it went. Not counted as passes (the lending is counted by its caller).
pub(crate) async fn send_answer_with_fds(
    stream: &UnixStream,
    answer: &ToGuest,
    fds: &[BorrowedFd<'_>],
) -> bool {
    let Ok(bytes) = frame::to_vec(answer) else {
        return false;
    };
    match crate::fdpass::send_with_fds(stream, &bytes, fds).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "could not lend the sockets");
            false
        }
    }
}

/// Sends `answer` alone, whole, without closing the stream (which may carry the next request).
pub(crate) async fn send_answer(stream: &UnixStream, answer: &ToGuest) -> bool {
    let Ok(bytes) = frame::to_vec(answer) else {
        return false;
    };
    let mut sent = 0;
    while sent < bytes.len() {
        if stream.writable().await.is_err() {
            return false;
        }
        match stream.try_write(&bytes[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
    true
}
