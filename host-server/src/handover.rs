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
    let sent = send_answer_with_fds(stream, answer, &[fd]).await;
    if sent {
        shared.metrics.record(Event::FdPassed);
    }
    sent
}

/// Sends `answer` with every socket of `fds` attached in one SCM_RIGHTS (one for a connect, a
/// `Lent` answer's sockets); returns whether it went. Not counted: [`send_answer_with_fd`]
/// counts a pass, a lending is counted by its caller.
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
            tracing::debug!(error = %e, "could not pass the socket");
            false
        }
    }
}
