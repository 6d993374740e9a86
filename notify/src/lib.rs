//! systemd's service notification protocol (sd_notify(3)) for outsock's daemons, run as
//! `Type=notify` units with `WatchdogSec=`: `READY=1` once a daemon's sockets are up,
//! `WATCHDOG=1` every half watchdog period from its main loop, `STOPPING=1` when a stop begins.
//!
//! The protocol is one datagram per message to the `AF_UNIX` socket named by `$NOTIFY_SOCKET`:
//! a path, or an abstract name written with a leading `@` (sent with a leading NUL byte). That
//! is all, so it is written here rather than taken from a library. Without `$NOTIFY_SOCKET`
//! every call is a no-op, so the binaries behave the same outside systemd.
//!
//! [`Notifier`] keeps one socket for a daemon's lifetime; [`notify`] is the one-shot form.

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Why the notification socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither an absolute path nor an `@abstract` name.
    #[error("NOTIFY_SOCKET `{0}` is neither an absolute path nor an @abstract name")]
    Address(String),
    /// The address was well formed but no socket could be made for it.
    #[error("cannot use the notification socket {addr}")]
    Socket {
        /// `$NOTIFY_SOCKET` as given.
        addr: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Where notifications go; [`Notifier::disabled`] when not run by systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier that sends nothing.
    #[must_use]
    pub fn disabled() -> Self {
        Self { target: None }
    }

    /// A notifier for `$NOTIFY_SOCKET`, or a disabled one when it is unset or empty.
    ///
    /// # Errors
    /// As [`Notifier::to`].
    pub fn from_env() -> Result<Self, NotifyError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(v) if !v.is_empty() => Self::to(&v),
            _ => Ok(Self::disabled()),
        }
    }

    /// A notifier for the socket `addr`: `/path` or `@abstract-name`.
    ///
    /// # Errors
    /// [`NotifyError::Address`] for anything else; [`NotifyError::Socket`] when no socket can
    /// be made.
    pub fn to(addr: &OsStr) -> Result<Self, NotifyError> {
        let shown = || addr.to_string_lossy().into_owned();
        let bytes = addr.as_bytes();
        let sockaddr = match bytes.split_first() {
            Some((b'@', name)) => SocketAddr::from_abstract_name(name),
            Some((b'/', _)) => SocketAddr::from_pathname(addr),
            _ => return Err(NotifyError::Address(shown())),
        }
        .map_err(|_| NotifyError::Address(shown()))?;
        let socket = UnixDatagram::unbound().map_err(|source| NotifyError::Socket {
            addr: shown(),
            source,
        })?;
        Ok(Self {
            target: Some((socket, sockaddr)),
        })
    }

    /// Whether messages are sent anywhere.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (lines of `KEY=VALUE`).
    ///
    /// # Errors
    /// When the datagram cannot be sent (nobody listens there any more).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        match &self.target {
            Some((socket, addr)) => socket.send_to_addr(state.as_bytes(), addr).map(|_| ()),
            None => Ok(()),
        }
    }

    /// `READY=1`: start-up is complete.
    ///
    /// # Errors
    /// As [`Notifier::notify`].
    pub fn ready(&self) -> io::Result<()> {
        self.notify("READY=1")
    }

    /// `WATCHDOG=1`: the service is alive.
    ///
    /// # Errors
    /// As [`Notifier::notify`].
    pub fn watchdog(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }

    /// `STOPPING=1`: shutdown has begun.
    ///
    /// # Errors
    /// As [`Notifier::notify`].
    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1")
    }
}

/// Sends `state` once to `$NOTIFY_SOCKET`; returns whether it was sent (false without one).
///
/// # Errors
/// When `$NOTIFY_SOCKET` is malformed or the datagram cannot be sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let n = Notifier::from_env()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    n.notify(state)?;
    Ok(n.enabled())
}

/// Sends `state` once to the notification socket `addr` (`/path` or `@abstract-name`).
///
/// # Errors
/// When the address is malformed or the datagram cannot be sent.
pub fn notify_to(addr: &str, state: &str) -> io::Result<()> {
    Notifier::to(OsStr::new(addr))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?
        .notify(state)
}

/// How often to send `WATCHDOG=1`, from `$WATCHDOG_USEC` and `$WATCHDOG_PID`; `None` when
/// systemd asked for no watchdog (or asked another process).
#[must_use]
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_for(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// Half the watchdog timeout `usec` (as sd_watchdog_enabled(3) advises, so one late tick is not
/// fatal), when it is set, above 0, and meant for process `me` (`pid` unset or equal).
#[must_use]
pub fn watchdog_interval_for(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(rx: &UnixDatagram) -> String {
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_each_state_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(path.as_os_str()).unwrap();
        assert!(n.enabled());
        n.ready().unwrap();
        n.watchdog().unwrap();
        n.stopping().unwrap();
        assert_eq!(recv(&rx), "READY=1");
        assert_eq!(recv(&rx), "WATCHDOG=1");
        assert_eq!(recv(&rx), "STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("outsock-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        let n = Notifier::to(OsStr::new(&format!("@{name}"))).unwrap();
        n.ready().unwrap();
        assert_eq!(recv(&rx), "READY=1");
    }

    #[test]
    fn disabled_sends_nothing_and_bad_addresses_are_refused() {
        let n = Notifier::disabled();
        assert!(!n.enabled());
        n.ready().unwrap();
        assert!(matches!(
            Notifier::to(OsStr::new("relative/path")),
            Err(NotifyError::Address(_))
        ));
        assert!(matches!(
            Notifier::to(OsStr::new("")),
            Err(NotifyError::Address(_))
        ));
        // Nobody listens there: sending fails, and the caller decides what that means.
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::to(dir.path().join("absent").as_os_str()).unwrap();
        assert!(n.ready().is_err());
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval_for(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_interval_for(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval_for(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_for(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_for(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval_for(None, None, 7), None);
    }
}
