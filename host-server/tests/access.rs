//! Who may use which socket, end to end with real users (DESIGN.md §11, docs/security.md, "Access"):
//! the real outsock-dns-cache and outsock-host-server run as root in the test world's `host`
//! namespace; peers run as users this test creates (`testworld::users`), each a small Python
//! client started with `setpriv` in the `legacy` namespace, so the daemons see their uids in
//! SO_PEERCRED. The sockets' directory is root's and mode 0755, and the sockets are made
//! world-connectable on purpose, so that nothing but the SO_PEERCRED checks decides.
//!
//! Also per-VM identity: a VM's outbound connection reaches a world server from the VM's own
//! address, a VM's own `allowed_ports` replace the global list, and a process-mode listener can
//! never be configured onto a VM's address.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shared_proto::lookup::{
    ListQuery, LookupErrorCode, LookupOp, LookupReply, LookupRequest, LookupResponse,
};
use shared_proto::outsource::{ConnectRequest, ListenRequest, ToGuest, ToHost, VmHello, VmList};
use shared_proto::{frame, Errno};
use testworld::users::TestUser;
use testworld::{addr, zone, Daemon, World};

const LISTEN_PORT: u16 = 8080;
const VM_B_PORT: u16 = 9090;
const WHOAMI_PORT: u16 = 7070;

/// The peer: sends the hex bytes given, prints what comes back as hex (until EOF or 3 s);
/// or tries to unlink/rename a path and prints the errno name (or "ok").
const PEER_PY: &str = r#"
import os, socket, sys, errno
what = sys.argv[1]
if what == "talk":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sys.argv[2])
    except OSError as e:
        print("connect:" + errno.errorcode.get(e.errno, str(e.errno))); sys.exit(0)
    s.sendall(bytes.fromhex(sys.argv[3]))
    s.settimeout(3)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b: break
            out += b
    except socket.timeout:
        pass
    except OSError:
        pass
    print("got:" + out.hex())
elif what == "unlink":
    try:
        os.unlink(sys.argv[2]); print("ok")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
elif what == "replace":
    # Bind a socket of our own elsewhere and rename it over the target.
    tmp = "/tmp/outsock-access-%d.sock" % os.getpid()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(tmp)
    try:
        os.rename(tmp, sys.argv[2]); print("ok")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
    finally:
        try: os.unlink(tmp)
        except OSError: pass
"#;

/// A tiny IPv6 TCP server for `world`: answers each connection with the peer's address.
const WHOAMI_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
while True:
    c, a = s.accept()
    c.sendall(a[0].encode())
    c.close()
"#;

fn dns_cache_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OUTSOCK_DNS_CACHE_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("outsock-dns-cache");
    p.is_file().then_some(p)
}

struct Rig {
    world: World,
    run: tempfile::TempDir,
    peer_py: PathBuf,
    _daemons: Vec<Daemon>,
}

impl Rig {
    fn host_sock(&self) -> PathBuf {
        self.run.path().join("host.sock")
    }
    fn dns_sock(&self) -> PathBuf {
        self.run.path().join("dns.sock")
    }
    fn vm_sock(&self, vm: &str) -> PathBuf {
        self.run.path().join(format!("vm-{vm}.vsock"))
    }

    /// Runs the peer script as `user` in `legacy`; its one line of output.
    fn peer(&self, user: &TestUser, args: &[&str]) -> String {
        let out = self
            .world
            .legacy()
            .command("setpriv")
            .arg(format!("--reuid={}", user.uid()))
            .arg(format!("--regid={}", user.gid()))
            .arg("--clear-groups")
            // The system's interpreter: a user's shims (pyenv) may not be readable by others.
            .arg("/usr/bin/python3")
            .arg(&self.peer_py)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "peer as {}: {}",
            user.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Sends `frames` on host.sock as `user`; the first answer frame (and the bytes after it).
    fn host(&self, user: &TestUser, frames: &[ToHost]) -> (ToGuest, Vec<u8>) {
        let mut bytes = Vec::new();
        for f in frames {
            bytes.extend(frame::to_vec(f).unwrap());
        }
        let sock = self.host_sock();
        let line = self.peer(user, &["talk", sock.to_str().unwrap(), &hex(&bytes)]);
        let got = unhex(
            line.strip_prefix("got:")
                .unwrap_or_else(|| panic!("{line}")),
        );
        let (answer, used) = frame::decode::<ToGuest>(&got)
            .unwrap()
            .unwrap_or_else(|| panic!("no answer frame for {}: {line}", user.name()));
        (answer, got[used..].to_vec())
    }

    /// One dns.sock request as `user`; the reply.
    fn dns(&self, user: &TestUser, op: LookupOp) -> LookupReply {
        let bytes = frame::to_vec(&LookupRequest { id: 7, op }).unwrap();
        let sock = self.dns_sock();
        let line = self.peer(user, &["talk", sock.to_str().unwrap(), &hex(&bytes)]);
        let got = unhex(
            line.strip_prefix("got:")
                .unwrap_or_else(|| panic!("{line}")),
        );
        let (r, _) = frame::decode::<LookupResponse>(&got).unwrap().unwrap();
        assert_eq!(r.id, 7);
        r.reply
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn wait_for(path: &Path, d: &mut Daemon, what: &str) {
    d.wait_until(Duration::from_secs(20), || path.exists())
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

fn hello(vm: &str) -> ToHost {
    ToHost::Hello(VmHello {
        vm: vm.into(),
        cid: 3,
        port: 1024,
        takes_sockets: false,
    })
}

fn connect(dest: SocketAddrV4) -> ToHost {
    ToHost::Connect(ConnectRequest {
        dest,
        pass_fd: false,
        nonblocking: false,
    })
}

fn listen(port: u16, vsock_port: u32) -> ToHost {
    ToHost::Listen(ListenRequest {
        addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
        backlog: 4,
        pass_fd: vsock_port == 0,
        vsock_port,
        channel: false,
    })
}

fn http_get(host: &World, addr: &str) -> String {
    let addr = addr.to_owned();
    host.host()
        .run(move || {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .unwrap()
}

fn forbidden(r: &LookupReply) -> &str {
    match r {
        LookupReply::Error {
            code: LookupErrorCode::Forbidden,
            message,
        } => message,
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

#[test]
fn sockets_admit_peers_by_so_peercred_and_vms_keep_their_identity() {
    if !testworld::skip_unless_root("access") {
        return;
    }
    let Some(dns_bin) = dns_cache_bin() else {
        assert!(
            std::env::var("OUTSOCK_E2E_REQUIRED").as_deref() != Ok("1"),
            "outsock-dns-cache is not built, and OUTSOCK_E2E_REQUIRED=1 forbids skipping"
        );
        println!("SKIP access: outsock-dns-cache is not built");
        return;
    };
    let proc1 = TestUser::create("proca").unwrap();
    let proc2 = TestUser::create("procb").unwrap();
    let vmm_a = TestUser::create("vmma").unwrap();
    let vmm_b = TestUser::create("vmmb").unwrap();
    let outsider = TestUser::create("out").unwrap();

    let world = World::start("access").unwrap();
    // The sockets' directory: root's, nobody else may write (the deploy layout's 0750
    // outsock:outsock, with root as the daemons' user and everyone as the group).
    let run = tempfile::Builder::new()
        .prefix("outsock-access-run-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let peer_py = run.path().join("peer.py");
    std::fs::write(&peer_py, PEER_PY).unwrap();
    std::fs::set_permissions(&peer_py, std::fs::Permissions::from_mode(0o644)).unwrap();
    let whoami_py = world.path("whoami.py");
    std::fs::write(&whoami_py, WHOAMI_PY).unwrap();

    let db = world.path("mappings.sqlite3");
    let dns_sock = run.path().join("dns.sock");
    let host_sock = run.path().join("host.sock");
    let dns_cfg = world.path("dns-cache.toml");
    std::fs::write(
        &dns_cfg,
        format!(
            "listen = [\"[::1]:53\"]\nupstreams = [\"[{dns}]:53\"]\nupstream_timeout_ms = 1000\n\
             database = \"{db}\"\nlookup_socket = \"{sock}\"\nmetrics = \"127.0.0.1:9153\"\n",
            dns = addr::DNS,
            db = db.display(),
            sock = dns_sock.display(),
        ),
    )
    .unwrap();
    let vm_sock = |vm: &str| run.path().join(format!("vm-{vm}.vsock"));
    let host_cfg = world.path("host-server.toml");
    std::fs::write(
        &host_cfg,
        format!(
            "socket = \"{sock}\"\ndns_socket = \"{dns}\"\ndatabase = \"{db}\"\n\
             metrics_listen = \"127.0.0.1:9641\"\nprocess_uids = [\"{p1}\", {p2}]\n\
             [listen]\ndefault_address = \"{host}\"\nallowed_ports = [{LISTEN_PORT}]\n\
             [vms.a]\nsocket = \"{vma}\"\naddress = \"{a}\"\nvmm_user = \"{ua}\"\n\
             [vms.b]\nsocket = \"{vmb}\"\naddress = \"{b}\"\nvmm_uid = {ub}\n\
             allowed_ports = [{VM_B_PORT}]\n",
            sock = host_sock.display(),
            dns = dns_sock.display(),
            db = db.display(),
            p1 = proc1.name(),
            p2 = proc2.uid(),
            host = addr::HOST,
            vma = vm_sock("a").display(),
            a = addr::HOST_VMS[0],
            ua = vmm_a.name(),
            vmb = vm_sock("b").display(),
            b = addr::HOST_VMS[1],
            ub = vmm_b.uid(),
        ),
    )
    .unwrap();

    let mut daemons = Vec::new();
    let mut cmd = Command::new(&dns_bin);
    cmd.arg("--config").arg(&dns_cfg).env("RUST_LOG", "warn");
    let mut d = world.host().spawn("outsock-dns-cache", cmd).unwrap();
    wait_for(&dns_sock, &mut d, "outsock-dns-cache");
    daemons.push(d);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outsock-host-server"));
    cmd.arg("--config").arg(&host_cfg).env("RUST_LOG", "warn");
    let mut d = world.host().spawn("outsock-host-server", cmd).unwrap();
    wait_for(&host_sock, &mut d, "outsock-host-server");
    daemons.push(d);
    let mut cmd = Command::new("python3");
    cmd.arg(&whoami_py).arg(WHOAMI_PORT.to_string());
    daemons.push(world.world().spawn("whoami", cmd).unwrap());
    // A stand-in for VM a's socket, as outsock-vmm leaves it: mode 0660, the VMM's.
    let vm_a = std::os::unix::net::UnixListener::bind(vm_sock("a")).unwrap();
    std::fs::set_permissions(vm_sock("a"), std::fs::Permissions::from_mode(0o660)).unwrap();
    // Only SO_PEERCRED decides from here on: anyone may connect to the daemons' sockets.
    for s in [&dns_sock, &host_sock] {
        std::fs::set_permissions(s, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let rig = Rig {
        world,
        run,
        peer_py,
        _daemons: daemons,
    };

    // ---- host.sock ---------------------------------------------------------------------
    // The outsider is refused before anything it sends is read.
    let (a, _) = rig.host(&outsider, &[listen(LISTEN_PORT, 0)]);
    assert_eq!(a, ToGuest::Failed(Errno::EACCES), "outsider on host.sock");
    // Process-mode users (one by name, one by number) may; they listen on the default address.
    for p in [&proc1, &proc2] {
        let (a, _) = rig.host(p, &[listen(LISTEN_PORT, 0)]);
        assert!(
            matches!(a, ToGuest::Listening { .. }),
            "{}: {a:?}",
            p.name()
        );
    }
    // A process may not pretend to be a VMM.
    let (a, _) = rig.host(&proc1, &[hello("a"), listen(LISTEN_PORT, 0)]);
    assert_eq!(a, ToGuest::Failed(Errno::EPERM));
    // VMM a cannot claim VM b, nor b a.
    let (a, _) = rig.host(&vmm_a, &[hello("b"), listen(VM_B_PORT, 9)]);
    assert_eq!(a, ToGuest::Failed(Errno::EPERM), "VMM a claiming b");
    let (a, _) = rig.host(&vmm_b, &[hello("a"), listen(LISTEN_PORT, 9)]);
    assert_eq!(a, ToGuest::Failed(Errno::EPERM), "VMM b claiming a");
    // Per-VM allowed_ports: b listens only on its own list, a on the global one.
    let (a, _) = rig.host(&vmm_b, &[hello("b"), listen(VM_B_PORT, 9)]);
    assert!(
        matches!(a, ToGuest::Listening { .. }),
        "b on {VM_B_PORT}: {a:?}"
    );
    let (a, _) = rig.host(&vmm_b, &[hello("b"), listen(LISTEN_PORT, 9)]);
    assert_eq!(a, ToGuest::Failed(Errno::EACCES), "b on the global port");
    let (a, _) = rig.host(&vmm_a, &[hello("a"), listen(VM_B_PORT, 9)]);
    assert_eq!(a, ToGuest::Failed(Errno::EACCES), "a on b's port");
    let (a, _) = rig.host(&vmm_a, &[hello("a"), listen(LISTEN_PORT, 9)]);
    assert!(
        matches!(a, ToGuest::Listening { .. }),
        "a on {LISTEN_PORT}: {a:?}"
    );

    // A VM's outbound connection leaves from the VM's own address.
    let dummy: Ipv4Addr = {
        let out = rig.world.dig("::1", &["+short", zone::ECHO, "A"]).unwrap();
        out.lines().find_map(|l| l.trim().parse().ok()).unwrap()
    };
    for (user, vm, address) in [
        (&vmm_a, "a", addr::HOST_VMS[0]),
        (&vmm_b, "b", addr::HOST_VMS[1]),
    ] {
        let (a, rest) = rig.host(
            user,
            &[hello(vm), connect(SocketAddrV4::new(dummy, WHOAMI_PORT))],
        );
        assert!(matches!(a, ToGuest::Connected { .. }), "{vm}: {a:?}");
        assert_eq!(
            String::from_utf8_lossy(&rest),
            address.to_string(),
            "VM {vm}'s source"
        );
    }
    // A process's connection does not: the kernel picks the host's address.
    let (a, rest) = rig.host(&proc1, &[connect(SocketAddrV4::new(dummy, WHOAMI_PORT))]);
    assert!(matches!(a, ToGuest::Connected { .. }), "{a:?}");
    assert_eq!(String::from_utf8_lossy(&rest), addr::HOST.to_string());

    // ---- dns.sock ----------------------------------------------------------------------
    let list = || {
        LookupOp::List(ListQuery {
            direction: None,
            offset: 0,
            limit: 10,
        })
    };
    let pin = || LookupOp::Pin { dummy };
    for who in [&outsider, &proc1, &vmm_a] {
        for op in [list(), pin(), LookupOp::Flush, LookupOp::Stats] {
            let r = rig.dns(who, op.clone());
            let m = forbidden(&r);
            assert!(m.contains(&format!("uid {}", who.uid())), "{m}");
        }
    }
    let r = rig.dns(&outsider, LookupOp::Flush);
    assert!(forbidden(&r).contains("admin_uids"), "{r:?}");

    // ---- the sockets' files ------------------------------------------------------------
    for who in [&proc1, &vmm_a, &outsider] {
        for target in [rig.host_sock(), rig.dns_sock(), rig.vm_sock("a")] {
            let t = target.to_str().unwrap();
            assert_eq!(
                rig.peer(who, &["unlink", t]),
                "EACCES",
                "{} unlink {t}",
                who.name()
            );
            assert_eq!(
                rig.peer(who, &["replace", t]),
                "EACCES",
                "{} replace {t}",
                who.name()
            );
        }
    }
    for target in [rig.host_sock(), rig.dns_sock(), rig.vm_sock("a")] {
        assert!(target.exists(), "{}", target.display());
    }
    // A VM's socket is its VMM's: a process user cannot even connect to CONNECT a guest port.
    let vm_a_path = rig.vm_sock("a");
    let line = rig.peer(
        &proc1,
        &["talk", vm_a_path.to_str().unwrap(), &hex(b"CONNECT 22\n")],
    );
    assert_eq!(line, "connect:EACCES");

    // ---- the VM list (`outsock vm ls`) ---------------------------------------------------
    // Only root and host-server's own user (root here) may list: it names every tenant.
    for (who, frames) in [
        (&proc1, vec![ToHost::ListVms]),
        (&vmm_a, vec![ToHost::ListVms]),
        (&vmm_a, vec![hello("a"), ToHost::ListVms]),
    ] {
        let (a, _) = rig.host(who, &frames);
        assert_eq!(
            a,
            ToGuest::Failed(Errno::EACCES),
            "{} {frames:?}",
            who.name()
        );
    }
    let mut s = std::os::unix::net::UnixStream::connect(rig.host_sock()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&frame::to_vec(&ToHost::ListVms).unwrap())
        .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let VmList(vms) = frame::decode_exact::<VmList>(&got).unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    // a's socket answers (the stand-in this test holds: its pid); b has no VMM. Both VMs'
    // hellos above carried CID 3.
    let (a, b) = (&vms[0], &vms[1]);
    assert!(a.running && a.vmm_pid == std::process::id(), "{a:?}");
    assert!(!b.running && b.vmm_pid == 0, "{b:?}");
    assert_eq!((a.cid, b.cid), (3, 3));
    assert_eq!(
        (a.address, b.address),
        (addr::HOST_VMS[0], addr::HOST_VMS[1])
    );
    assert_eq!(a.socket, vm_a_path.display().to_string());
    drop(vm_a);

    // ---- counted -----------------------------------------------------------------------
    let host_metrics = http_get(&rig.world, "127.0.0.1:9641");
    assert!(
        host_metrics.contains("outsock_host_streams_refused_total{reason=\"forbidden\"} 1\n"),
        "{host_metrics}"
    );
    let dns_metrics = http_get(&rig.world, "127.0.0.1:9153");
    assert!(
        dns_metrics.contains("outsock_dns_lookup_refused_total{class=\"admin\"} 4\n"),
        "{dns_metrics}"
    );
}

#[test]
fn a_process_listener_is_never_configured_onto_a_vms_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("h.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\ndefault_address = \"{a}\"\n[vms.a]\nsocket = \"/nonexistent\"\n\
             address = \"{a}\"\nvmm_uid = 4242\n",
            a = addr::HOST_VMS[0]
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_outsock-host-server"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("listen.default_address"), "{stderr}");
    // The old global VMM list stops start-up and names its replacement.
    std::fs::write(&cfg, "vmm_uids = [0]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_outsock-host-server"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("vmm_user"),
        "{stderr}"
    );
}
