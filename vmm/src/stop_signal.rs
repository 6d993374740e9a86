//! The stop signals themselves, as plain data: which signals stop the VM and their names for
//! messages. A leaf module, so that the exit reasons ([`crate::vm_exit`]), the seccomp lists
//! ([`crate::seccomp`]), the graceful stop and the signal waiter ([`crate::signals`]) can all
//! name them without importing each other.

/// The signals that stop the VM.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The conventional name of a stop signal, for messages.
pub fn name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
