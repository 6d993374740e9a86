//! systemd's notification protocol for outsock's daemons (`Type=notify` units with
//! `WatchdogSec=`): one datagram per state change to `$NOTIFY_SOCKET` (a path, or an abstract
//! name written with a leading `@`). The protocol is a single datagram, so it is written here
//! directly rather than through a library.
//!
//! - [`notify`] sends `READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=…`.
//! - [`watchdog_interval`] says how often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, and
//!   only when `$WATCHDOG_PID` is unset or names this process.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` when `NOTIFY_SOCKET` is set. Returns whether it was sent.
///
/// # Errors
/// When the variable is set but the datagram cannot be sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    notify_to(&path.to_string_lossy(), state)?;
    Ok(true)
}

/// Sends `state` to the notification socket at `path`.
///
/// # Errors
/// When the address is invalid or the datagram cannot be sent.
pub fn notify_to(path: &str, state: &str) -> io::Result<()> {
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// How often to send `WATCHDOG=1`, when systemd asked for it.
#[must_use]
pub fn watchdog_interval() -> Option<Duration> {
    interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    // Half the timeout, as sd_watchdog_enabled(3) advises, so one late tick is not fatal.
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        notify_to(&p.to_string_lossy(), "READY=1").unwrap();
        let mut buf = [0u8; 32];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("outsock-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        notify_to(&format!("@{name}"), "WATCHDOG=1").unwrap();
        let mut buf = [0u8; 32];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process() {
        assert_eq!(
            interval_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            interval_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            interval_from(Some("30000000"), Some("8"), 7),
            None,
            "another process's watchdog"
        );
        assert_eq!(interval_from(None, None, 7), None);
        assert_eq!(interval_from(Some("0"), None, 7), None);
        assert_eq!(interval_from(Some("soon"), None, 7), None);
    }
}
