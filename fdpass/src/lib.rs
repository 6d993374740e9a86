//! Passing one socket descriptor over a Unix stream with `SCM_RIGHTS`: the single place that
//! builds and parses the control messages, shared by host-server (which sends the sockets it
//! opens) and liboutsock (which receives them inside the program).
//!
//! The two sides differ in which libc they may call: liboutsock is preloaded into programs and
//! exports its own `sendmsg`, `recvmsg` and `close`, so it must reach libc's through `dlsym`,
//! never through the symbols it replaces. Hence every call here goes through [`Sys`]: host-server
//! uses [`Libc`], liboutsock its own implementation. Nothing here allocates, locks or keeps
//! state, so it is safe to use after `fork` and on the shim's hot paths.
//!
//! - [`sendmsg_fd`]: one `sendmsg` whose data is the given bytes and whose control message is one
//!   `SCM_RIGHTS` with exactly one descriptor. On a stream socket the kernel attaches it to the
//!   first byte of the data, so the receiver gets it with that byte, before any later frame.
//! - [`recvmsg_fd`]: one `recvmsg` that keeps the first descriptor received in the caller's slot
//!   and closes every other one (a peer that sends more is wrong, and must not make us leak).
//! - [`recv_with_fd`]: the same for ordinary programs: libc's calls, close-on-exec, [`OwnedFd`].
//!
//! `unsafe` is denied here except in the two modules that are FFI: [`sys`] (the calls) and
//! `scm` (the control-message buffers).
//!
//! [`OwnedFd`]: std::os::fd::OwnedFd

#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod scm;
#[allow(unsafe_code)]
pub mod sys;

pub use scm::{recv_with_fd, recvmsg_fd, recvmsg_fds, sendmsg_fd, sendmsg_fds, MAX_FDS};
pub use sys::{Libc, Sys};
