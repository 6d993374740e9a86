//! Turning the host's socket errors into the errno a native IPv4 call would have given the guest.

use std::io;

use shared_proto::Errno;

/// The errno for a failed IPv6 (or IPv4-egress) connect. Linux numbers pass through unchanged
/// when the protocol can carry them; anything else becomes EIO-like ECONNABORTED rather than a
/// number the guest might misread.
#[must_use]
pub fn connect_errno(e: &io::Error) -> Errno {
    match e.raw_os_error().and_then(|n| u16::try_from(n).ok()) {
        Some(n) => Errno(n),
        None => match e.kind() {
            io::ErrorKind::TimedOut => Errno::ETIMEDOUT,
            io::ErrorKind::ConnectionRefused => Errno::ECONNREFUSED,
            io::ErrorKind::ConnectionReset => Errno::ECONNRESET,
            io::ErrorKind::AddrNotAvailable => Errno::EADDRNOTAVAIL,
            _ => Errno::ECONNABORTED,
        },
    }
}

/// The errno for a failed bind/listen on the guest's behalf.
#[must_use]
pub fn bind_errno(e: &io::Error) -> Errno {
    match e.raw_os_error().and_then(|n| u16::try_from(n).ok()) {
        Some(n) => Errno(n),
        None => Errno::EADDRNOTAVAIL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_pass_through() {
        let e = io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(connect_errno(&e), Errno::EHOSTUNREACH);
        let e = io::Error::from_raw_os_error(libc::ENETUNREACH);
        assert_eq!(connect_errno(&e), Errno::ENETUNREACH);
        let e = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(bind_errno(&e), Errno::EADDRINUSE);
    }

    #[test]
    fn synthetic_errors_map_by_kind() {
        let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
        assert_eq!(connect_errno(&e), Errno::ETIMEDOUT);
        let e = io::Error::other("odd");
        assert_eq!(connect_errno(&e), Errno::ECONNABORTED);
    }
}
