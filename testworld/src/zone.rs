//! The upstream test zone `outsock.test`, served by dnsmasq in `world`, and the answers tests
//! should expect. A records use TEST-NET-3 (203.0.113.0/24) only.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::addr;

pub const DOMAIN: &str = "outsock.test";
/// One AAAA (the HTTP server), TTL [`V6ONLY_TTL`].
pub const V6ONLY: &str = "v6only.outsock.test";
pub const V6ONLY_TTL: u32 = 300;
/// One AAAA (the echo servers).
pub const ECHO: &str = "echo.outsock.test";
/// Three AAAA records, all served by world's HTTP and echo servers.
pub const MULTI: &str = "multi.outsock.test";
pub const MULTI_AAAA: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0xa1),
    Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0xa2),
    Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0xa3),
];
/// CNAME → [`ALIAS2`] → CNAME → [`V6ONLY`].
pub const ALIAS: &str = "alias.outsock.test";
pub const ALIAS2: &str = "alias2.outsock.test";
/// A and AAAA.
pub const DUAL: &str = "dual.outsock.test";
pub const DUAL_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const DUAL_AAAA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0xd1);
/// A only: no AAAA.
pub const V4ONLY: &str = "v4only.outsock.test";
pub const V4ONLY_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// AAAA with a short TTL ([`SHORT_TTL_SECS`]) and a long one ([`LONG_TTL_SECS`]).
pub const SHORT_TTL: &str = "short-ttl.outsock.test";
pub const SHORT_TTL_AAAA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0x5);
pub const SHORT_TTL_SECS: u32 = 5;
pub const LONG_TTL: &str = "long-ttl.outsock.test";
pub const LONG_TTL_AAAA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0x6);
pub const LONG_TTL_SECS: u32 = 86_400;
/// A TXT record (for "other types are forwarded").
pub const TXT: &str = "txt.outsock.test";
pub const TXT_DATA: &str = "outsock test zone";
/// A name whose address ([`addr::NO_HOST`]) is on the world's link but nobody's: pings go
/// unanswered.
pub const NO_HOST_AAAA: &str = "nohost.outsock.test";
/// A name under the zone that does not exist: NXDOMAIN.
pub const MISSING: &str = "missing.outsock.test";

/// Names whose only address the destination policy refuses (dns-cache answers NODATA):
/// AAAA `::1`, `fe80::1`, `::ffff:203.0.113.5`, the host's own address, an address in the tests'
/// deny prefix; A `127.0.0.1`, `169.254.1.1`, the host's IPv4 address (IPv4-egress tests).
pub const LOOPBACK_AAAA: &str = "loopback.outsock.test";
pub const LINK_LOCAL_AAAA: &str = "link-local.outsock.test";
pub const LINK_LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
pub const MAPPED_AAAA: &str = "mapped.outsock.test";
pub const MAPPED_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xcb00, 0x7105);
pub const SELF_AAAA: &str = "self.outsock.test";
pub const DENIED_AAAA: &str = "denied.outsock.test";
pub const LOOPBACK_A: &str = "loopback4.outsock.test";
pub const LINK_LOCAL_A: &str = "link-local4.outsock.test";
pub const LINK_LOCAL_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const SELF_A: &str = "self4.outsock.test";

/// World addresses that are named in the zone and must exist on world's interface.
#[must_use]
pub fn world_addresses() -> Vec<Ipv6Addr> {
    let mut v = vec![
        addr::WORLD,
        addr::DNS,
        addr::ECHO,
        addr::HTTP,
        addr::CLIENT,
        DUAL_AAAA,
        SHORT_TTL_AAAA,
        LONG_TTL_AAAA,
        addr::DENIED,
    ];
    v.extend(MULTI_AAAA);
    v
}

/// The dnsmasq configuration that serves the zone.
#[must_use]
pub fn dnsmasq_conf(log_file: &str) -> String {
    let mut c = String::new();
    let mut line = |s: String| {
        c.push_str(&s);
        c.push('\n');
    };
    line("no-resolv".into());
    line("no-hosts".into());
    line("no-poll".into());
    line("bind-interfaces".into());
    line(format!("listen-address={}", addr::DNS));
    line("port=53".into());
    line(format!("local=/{DOMAIN}/"));
    line("log-queries".into());
    line(format!("log-facility={log_file}"));
    line(format!("host-record={V6ONLY},{},{V6ONLY_TTL}", addr::HTTP));
    line(format!("host-record={ECHO},{},60", addr::ECHO));
    for a in MULTI_AAAA {
        line(format!("host-record={MULTI},{a},120"));
    }
    line(format!("cname={ALIAS},{ALIAS2},30"));
    line(format!("cname={ALIAS2},{V6ONLY},30"));
    line(format!("host-record={DUAL},{DUAL_A},{DUAL_AAAA},300"));
    line(format!("host-record={V4ONLY},{V4ONLY_A},300"));
    line(format!(
        "host-record={SHORT_TTL},{SHORT_TTL_AAAA},{SHORT_TTL_SECS}"
    ));
    line(format!(
        "host-record={LONG_TTL},{LONG_TTL_AAAA},{LONG_TTL_SECS}"
    ));
    line(format!("txt-record={TXT},\"{TXT_DATA}\""));
    line(format!("host-record={LOOPBACK_AAAA},::1,60"));
    line(format!("host-record={LINK_LOCAL_AAAA},{LINK_LOCAL_V6},60"));
    line(format!("host-record={MAPPED_AAAA},{MAPPED_V6},60"));
    line(format!("host-record={SELF_AAAA},{},60", addr::HOST));
    line(format!("host-record={DENIED_AAAA},{},60", addr::DENIED));
    line(format!("host-record={NO_HOST_AAAA},{},60", addr::NO_HOST));
    line(format!("host-record={LOOPBACK_A},127.0.0.1,60"));
    line(format!("host-record={LINK_LOCAL_A},{LINK_LOCAL_V4},60"));
    line(format!("host-record={SELF_A},{},60", addr::HOST_V4));
    c
}
