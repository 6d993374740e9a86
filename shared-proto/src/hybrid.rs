//! The text handshake of "hybrid" vsock (Firecracker's convention), used on a VM's own Unix
//! socket: a host process writes `CONNECT <port>\n`, and once the guest accepts on that vsock
//! port the VMM answers `OK <host port>\n`; afterwards the Unix stream is the vsock stream.

use thiserror::Error;

/// Longest handshake line accepted, newline included; anything longer is garbage.
pub const MAX_LINE: usize = 32;

/// A malformed handshake line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HybridError {
    #[error("handshake line is longer than {MAX_LINE} bytes or has no newline")]
    BadLength,
    #[error("handshake line does not start with {expected:?}")]
    BadVerb { expected: &'static str },
    #[error("handshake line has an invalid port number")]
    BadPort,
}

/// The line a host process sends to reach guest vsock port `port`.
#[must_use]
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// The VMM's answer once the guest accepted; `host_port` is the host side's vsock port.
#[must_use]
pub fn ok_line(host_port: u32) -> String {
    format!("OK {host_port}\n")
}

/// Parses a whole `CONNECT <port>\n` line (newline included) and returns the port.
///
/// # Errors
/// [`HybridError`] when the line is malformed.
pub fn parse_connect(line: &[u8]) -> Result<u32, HybridError> {
    parse(line, "CONNECT ")
}

/// Parses a whole `OK <port>\n` line (newline included) and returns the port.
///
/// # Errors
/// [`HybridError`] when the line is malformed.
pub fn parse_ok(line: &[u8]) -> Result<u32, HybridError> {
    parse(line, "OK ")
}

fn parse(line: &[u8], verb: &'static str) -> Result<u32, HybridError> {
    let body = match line.split_last() {
        Some((b'\n', body)) if line.len() <= MAX_LINE => body,
        _ => return Err(HybridError::BadLength),
    };
    let digits = body
        .strip_prefix(verb.as_bytes())
        .ok_or(HybridError::BadVerb { expected: verb })?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HybridError::BadPort);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(HybridError::BadPort)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_well_formed_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Ok(52));
        assert_eq!(parse_ok(b"OK 1073741824\n"), Ok(1_073_741_824));
    }

    #[test]
    fn rejects_malformed_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Err(HybridError::BadLength));
        assert_eq!(parse_connect(b"CONNECT \n"), Err(HybridError::BadPort));
        assert_eq!(parse_connect(b"CONNECT -1\n"), Err(HybridError::BadPort));
        assert_eq!(
            parse_connect(b"CONNECT 99999999999\n"),
            Err(HybridError::BadPort)
        );
        assert_eq!(
            parse_connect(b"OK 5\n"),
            Err(HybridError::BadVerb {
                expected: "CONNECT "
            })
        );
        assert_eq!(parse_connect(&[b'1'; 40]), Err(HybridError::BadLength));
    }

    proptest! {
        #[test]
        fn round_trips(port: u32) {
            prop_assert_eq!(parse_connect(connect_line(port).as_bytes()), Ok(port));
            prop_assert_eq!(parse_ok(ok_line(port).as_bytes()), Ok(port));
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_connect(&bytes);
            let _ = parse_ok(&bytes);
        }
    }
}
