//! BIND's `dig` (Debian's bind9-dnsutils) through `outsock run`, unmodified, in the test
//! world's `legacy` namespace (nothing but `lo`): over UDP and TCP, both to the guest DNS
//! address named on the command line and to the nameserver of `legacy`'s /etc/resolv.conf,
//! which is not the guest DNS address and does not exist anywhere (liboutsock sends its
//! queries to the guest DNS address and shows the replies as coming from it, which dig
//! checks). dig's libuv sends and receives UDP with `syscall(__NR_sendmmsg/__NR_recvmmsg)`,
//! which liboutsock's `syscall` interposition carries onto the association.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Output;

use outsock_e2e::{stack, text};
use testworld::stack::{Stack, GUEST_DNS};
use testworld::{addr, zone};

/// A nameserver address that is not the guest DNS address and that nothing answers.
const NAMESERVER: &str = "10.53.0.53";

/// `legacy`'s own /etc/resolv.conf: `ip netns exec` bind-mounts the files of
/// /etc/netns/NAME/ over /etc for the programs it runs. Removed on drop.
struct NetnsResolvConf(PathBuf);

impl NetnsResolvConf {
    fn create(s: &Stack, text: &str) -> Self {
        let dir = PathBuf::from("/etc/netns").join(s.world.legacy().name());
        // Another test's drop may remove an empty /etc/netns between the two steps: again.
        let made = (0..5).any(|_| {
            std::fs::create_dir_all(&dir).is_ok()
                && std::fs::write(dir.join("resolv.conf"), text).is_ok()
        });
        assert!(made, "cannot write {}/resolv.conf", dir.display());
        Self(dir)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // /etc/netns itself only when no other world left a directory there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// Runs `dig ARGS… +short` in `legacy` through `outsock run FLAGS…`, bounded to 60 s.
fn dig(s: &Stack, flags: &[&str], args: &[&str]) -> Output {
    let mut cmd = s.legacy_with(flags, "timeout").unwrap();
    cmd.args(["60", "dig", "+time=3", "+tries=2", "+short"])
        .args(args);
    cmd.output().unwrap()
}

#[test]
fn bind_dig_over_udp_and_tcp_to_the_guest_dns_and_the_resolv_conf_nameserver() {
    dig_case("dig", &[]);
}

/// The same with the supervisor alone: dig's raw `sendmmsg`/`recvmmsg` on its UDP socket are
/// the kernel's own on an association's end in the supervisor's private network (the
/// preload is not there to see them).
#[test]
fn bind_dig_under_the_supervisor_alone_over_udp_and_tcp() {
    dig_case("dig-sup", &["--supervisor-only"]);
}

fn dig_case(label: &str, flags: &[&str]) {
    let Some(s) = stack(label, "") else {
        return;
    };
    let _conf = NetnsResolvConf::create(&s, &format!("nameserver {NAMESERVER}\n"));
    // The programs in `legacy` see that resolv.conf.
    let cat = s
        .world
        .legacy()
        .command("cat")
        .arg("/etc/resolv.conf")
        .output()
        .unwrap();
    assert!(
        text(&cat.stdout).contains(NAMESERVER),
        "{}",
        text(&cat.stdout)
    );

    let guest = format!("@{GUEST_DNS}");
    for (what, args) in [
        ("dig @guest-dns", vec![guest.as_str(), "A", zone::V6ONLY]),
        (
            "dig @guest-dns +tcp",
            vec![guest.as_str(), "+tcp", "A", zone::V6ONLY],
        ),
        ("dig (resolv.conf)", vec!["A", zone::V6ONLY]),
        ("dig +tcp (resolv.conf)", vec!["+tcp", "A", zone::V6ONLY]),
    ] {
        let out = dig(&s, flags, &args);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{what} failed ({}): {stdout}\n{}\n{}",
            out.status,
            text(&out.stderr),
            s.logs()
        );
        // dns-cache's dummy for the IPv6-only HTTP server, and nothing else (dig prints its
        // warnings, such as a reply from an unexpected source, on stdout too).
        let dummy = s.dummy_for(addr::HTTP).unwrap();
        assert_eq!(
            stdout.trim(),
            dummy.to_string(),
            "{what}: {stdout}\n{}",
            text(&out.stderr)
        );
    }
}

/// A resolver's way without `connect`: an unconnected UDP socket `sendto` the nameserver and
/// `recvfrom`, which must report the nameserver as the source (the shim remembers which
/// nameserver the socket asked).
const PY_SENDTO: &str = r#"
import socket, struct, sys
ns, name = sys.argv[1], sys.argv[2]
q = struct.pack(">HHHHHH", 0x4f53, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
q += struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(q, (ns, 53))
data, src = s.recvfrom(4096)
assert data[:2] == q[:2], data
# One A record, the message's last four bytes.
print(src[0], src[1], socket.inet_ntoa(data[-4:]))
"#;

#[test]
fn unconnected_sendto_the_resolv_conf_nameserver_is_answered_from_it() {
    let Some(s) = stack("dig-sendto", "") else {
        return;
    };
    let _conf = NetnsResolvConf::create(&s, &format!("nameserver {NAMESERVER}\n"));
    let mut cmd = s.legacy("timeout").unwrap();
    cmd.args(["60", "python3", "-c", PY_SENDTO, NAMESERVER, zone::V6ONLY]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "python sendto failed ({}): {}\n{}",
        out.status,
        text(&out.stderr),
        s.logs()
    );
    let dummy = s.dummy_for(addr::HTTP).unwrap();
    assert_eq!(text(&out.stdout).trim(), format!("{NAMESERVER} 53 {dummy}"));
}

/// dns-cache down (a restart under way): host-server answers a program's query SERVFAIL itself,
/// over UDP and TCP, so the resolver moves on at once instead of waiting out its timeout for
/// an answer that never comes; after dns-cache is back the same query is answered.
#[test]
fn with_dns_cache_down_a_query_is_servfail_at_once() {
    let Some(mut s) = stack("dig-down", "") else {
        return;
    };
    let guest = format!("@{GUEST_DNS}");
    // Warm: host-server's dns.sock connection is up.
    assert!(dig(&s, &[], &[guest.as_str(), "A", zone::V6ONLY])
        .status
        .success());
    s.stop_dns();
    for extra in [None, Some("+tcp")] {
        let mut cmd = s.legacy("timeout").unwrap();
        cmd.args([
            "30",
            "dig",
            "+time=5",
            "+tries=1",
            guest.as_str(),
            "A",
            zone::ECHO,
        ]);
        if let Some(e) = extra {
            cmd.arg(e);
        }
        let t = std::time::Instant::now();
        let out = cmd.output().unwrap();
        let took = t.elapsed();
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("status: SERVFAIL"),
            "{extra:?}: {stdout}\n{}",
            text(&out.stderr)
        );
        assert!(
            took < std::time::Duration::from_secs(3),
            "{extra:?}: SERVFAIL after {took:?} (dig's timeout is 5 s)"
        );
    }
    s.start_dns().unwrap();
    let mut answered = false;
    for _ in 0..50 {
        let out = dig(&s, &[], &[guest.as_str(), "A", zone::ECHO]);
        if out.status.success() && !text(&out.stdout).trim().is_empty() {
            answered = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        answered,
        "answered again once dns-cache is back\n{}",
        s.logs()
    );
}
