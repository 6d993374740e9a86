//! Which stream reaches host-server, chosen as liboutsock chooses (`guest/shim/src/transport.rs`):
//! `OUTSOCK_TRANSPORT` in the environment, else `transport=` in [`CONFIG_FILE`] (the guest
//! image's shim settings), else a Unix stream to host-server's socket (process mode). The value
//! is `unix` or `vsock:<port>`.
//!
//! Inside a VM (`vsock:<port>`) each request is an `AF_VSOCK` stream to the host (CID 2) that
//! the VMM bridges to host-server; host-server cannot pass a descriptor over it, so a TCP
//! connect is relayed on that stream, which itself becomes the program's socket (as
//! liboutsock does in a VM). The guest's DNS is the forwarder on 127.0.0.1:53, a loopback
//! nameserver that every resolver reaches natively, so no nameserver is redirected there; and
//! listeners are vsock listeners of their own, as liboutsock's in a VM (`vmlisten`).

/// The guest image's shim settings (`key=value` lines; `#` comments).
pub const CONFIG_FILE: &str = "/etc/outsock/shim.conf";
/// The host's vsock CID.
pub const HOST_CID: u32 = 2;

/// Parses a transport value: `Some(None)` Unix, `Some(Some(port))` vsock, `None` invalid.
#[must_use]
pub fn parse(v: &str) -> Option<Option<u32>> {
    let v = v.trim();
    if v == "unix" {
        return Some(None);
    }
    let port = v.strip_prefix("vsock:")?.parse().ok()?;
    Some(Some(port))
}

/// The value of `key` in a config file's text.
#[must_use]
pub fn config_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

/// The vsock port chosen by `env` (`OUTSOCK_TRANSPORT`'s value), else by the config file's
/// text; `None`: Unix (also for an invalid value, as liboutsock reads it).
#[must_use]
pub fn choose(env: Option<&str>, config: Option<&str>) -> Option<u32> {
    env.or_else(|| config.and_then(|t| config_value(t, "transport")))
        .and_then(parse)
        .flatten()
}

/// The vsock port host-server is reached on in this process's setting, or `None` (Unix).
#[must_use]
pub fn vsock_port() -> Option<u32> {
    let env = std::env::var("OUTSOCK_TRANSPORT").ok();
    let config = std::fs::read_to_string(CONFIG_FILE).ok();
    choose(env.as_deref(), config.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_as_liboutsock_chooses() {
        assert_eq!(parse("unix"), Some(None));
        assert_eq!(parse(" vsock:1024 "), Some(Some(1024)));
        assert_eq!(parse("vsock:x"), None);
        let image = "# guest image\ntransport = vsock:1024  # host-server\ndns=10.170.160.1\n";
        assert_eq!(config_value(image, "dns"), Some("10.170.160.1"));
        assert_eq!(choose(None, Some(image)), Some(1024));
        // The environment comes first.
        assert_eq!(choose(Some("unix"), Some(image)), None);
        assert_eq!(choose(Some("vsock:5"), None), Some(5));
        assert_eq!(choose(None, None), None);
        assert_eq!(choose(None, Some("transport=tcp\n")), None);
    }
}
