//! liboutsock loaded into real, unmodified programs in the test world's `legacy` namespace
//! (nothing but `lo`), without host-server: loopback traffic stays local and works, and
//! anything that would need outsourcing fails fast with a clear message instead of hanging or
//! leaking a packet. The outsourced paths themselves are tested end to end with host-server
//! and dns-cache in the e2e crate.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use testworld::World;

/// liboutsock.so, built next to this test binary's deps folder.
fn shim() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/debug");
    let so = dir.join("liboutsock.so");
    assert!(so.is_file(), "{} not built", so.display());
    so
}

fn start(label: &str) -> Option<World> {
    if !testworld::skip_unless_root(label) {
        return None;
    }
    Some(World::start(label).expect("test world starts"))
}

/// Runs `args` in `legacy` with the shim preloaded and host-server absent; returns the output
/// and how long it took.
fn run_without_host_server(world: &World, args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = world
        .legacy()
        .command("timeout")
        .arg("20")
        .args(args)
        .env("LD_PRELOAD", shim())
        .env("OUTSOCK_SOCKET", world.path("no-host-server.sock"))
        .output()
        .expect("program runs");
    (out, t.elapsed())
}

#[test]
fn programs_fail_fast_when_host_server_is_down() {
    let Some(world) = start("shim-down") else {
        return;
    };
    // netcat-traditional to a dummy address: ENETUNREACH at once, and the shim says why.
    let (out, took) =
        run_without_host_server(&world, &["nc", "-n", "-w", "5", "10.170.160.9", "80"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("liboutsock: cannot reach host-server"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unreachable"),
        "nc should report the errno: {stderr}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // curl -4 by name: resolution fails fast (no hang on a resolver timeout).
    let (out, took) = run_without_host_server(
        &world,
        &[
            "curl",
            "-4",
            "-sS",
            "-m",
            "15",
            "http://v6only.outsock.test/",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(6),
        "curl's 'could not resolve host': {stderr}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // python3 with AF_INET: a clear OSError, not a crash.
    let (out, _) = run_without_host_server(
        &world,
        &[
            "python3",
            "-c",
            "import socket,errno\ns=socket.socket()\ntry:\n s.connect(('10.170.160.9',80))\nexcept OSError as e:\n print(errno.errorcode[e.errno])",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ENETUNREACH");
}

#[test]
fn loopback_stays_local() {
    let Some(world) = start("shim-loopback") else {
        return;
    };
    // A python TCP server and client on 127.0.0.1 in one process, everything through the shim.
    let script = "import socket,threading\n\
        srv=socket.socket(); srv.bind(('127.0.0.1',0)); srv.listen()\n\
        port=srv.getsockname()[1]\n\
        def serve():\n c,_=srv.accept(); c.sendall(c.recv(64).upper()); c.close()\n\
        threading.Thread(target=serve).start()\n\
        cl=socket.create_connection(('127.0.0.1',port)); cl.sendall(b'loopback')\n\
        print(cl.recv(64).decode(), cl.getpeername()[0], socket.gethostbyname('localhost'))\n\
        u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(('127.0.0.1',0))\n\
        v=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); v.sendto(b'dgram',u.getsockname())\n\
        print(u.recvfrom(64)[0].decode())\n";
    let (out, _) = run_without_host_server(&world, &["python3", "-c", script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "LOOPBACK 127.0.0.1 127.0.0.1\ndgram\n");
    assert!(
        !stderr.contains("liboutsock"),
        "loopback must not touch host-server: {stderr}"
    );
}
