//! Test programs that both modes run unmodified against the world: in process mode in the
//! `legacy` namespace (e2e), in VM mode inside the guest (the lab's `vm` group).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// python3 clients by name, with argv[1] naming the world's echo server: a blocking TCP client
/// through the resolver (checks the socket is AF_INET and has addresses), an asyncio client
/// (non-blocking connect), and a UDP client, unconnected then connected. It prints
/// [`PY_CLIENTS_OUTPUT`] when everything worked.
pub const PY_CLIENTS: &str = r#"
import asyncio, socket, sys
name, echo_port = sys.argv[1], 7
# Blocking client through the resolver.
c = socket.create_connection((name, echo_port), timeout=10)
c.sendall(b"blocking")
c.shutdown(socket.SHUT_WR)
print(c.recv(64).decode(), c.family == socket.AF_INET, c.getpeername()[1], c.getsockname()[0] != "")
c.close()
# asyncio client (non-blocking connect).
async def main():
    r, w = await asyncio.open_connection(name, echo_port)
    w.write(b"asyncio")
    await w.drain()
    w.write_eof()
    print((await r.read()).decode())
    w.close()
asyncio.run(main())
# UDP client, unconnected then connected.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(10)
addr = socket.gethostbyname(name)
u.sendto(b"udp-unconnected", (addr, echo_port))
data, src = u.recvfrom(64)
print(data.decode(), src == (addr, echo_port))
u.connect((addr, echo_port))
u.send(b"udp-connected")
print(u.recv(64).decode())
"#;

/// What [`PY_CLIENTS`] prints when every client got its echo.
pub const PY_CLIENTS_OUTPUT: &str =
    "blocking True 7 True\nasyncio\nudp-unconnected True\nudp-connected\n";

/// python3, process mode: a connected UDP socket by name (argv[1]; argv[2] names another
/// address with an echo server). It becomes a host UDP socket passed to the program: the
/// addresses it reports are the dummies, an ICMP port unreachable comes back as ECONNREFUSED
/// as on a native socket, a send to another address keeps the peer as its default, and
/// connecting again reaches the new peer. It prints [`PY_UDP_CONNECTED_OUTPUT`].
pub const PY_UDP_CONNECTED: &str = r#"
import socket, sys
addr, other = socket.gethostbyname(sys.argv[1]), socket.gethostbyname(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(10)
u.connect((addr, 7))
print(u.getpeername() == (addr, 7), u.getsockname()[1] != 0, u.family == socket.AF_INET)
u.send(b"connected")
data, src = u.recvfrom(64)
print(data.decode(), src == (addr, 7))
u.sendto(b"to-the-peer", (addr, 7))
data, anc, flags, src = u.recvmsg(64)
print(data.decode(), src == (addr, 7))
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.settimeout(5)
r.connect((addr, 9))
r.send(b"nobody listens")
try:
    r.recv(64)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
u.sendto(b"elsewhere", (other, 7))
u.send(b"still-the-peer")
print(u.recv(64).decode())
u.connect((other, 7))
u.send(b"reconnected")
data, src = u.recvfrom(64)
print(data.decode(), src == (other, 7))
"#;

/// What [`PY_UDP_CONNECTED`] prints when everything behaved as on a native socket.
pub const PY_UDP_CONNECTED_OUTPUT: &str =
    "True True True\nconnected True\nto-the-peer True\nrefused\nstill-the-peer\nreconnected True\n";

/// C, shared by the C programs below and compiled in front of each (see [`build_c`]): resolving
/// a name to its dummy (`lookup`), a connected echo round trip (`echo`), errno names (`err`).
pub const C_COMMON: &str = include_str!("../c/common.c");

/// C, with [`C_COMMON`] in front: holds 70,000 descriptors (raising RLIMIT_NOFILE to 80,000;
/// where that cannot be raised, as many as the hard limit allows, and it says how many on
/// stderr as `top N`) and connects on fds above 69,000 to the echo server named by argv[1],
/// by name and by its dummy. It prints [`C_HIGH_FDS_OUTPUT`].
pub const C_HIGH_FDS: &str = include_str!("../c/high_fds.c");

/// What [`C_HIGH_FDS`] prints when both connects were outsourced above fd 69,000 (or the
/// lower top) and echoed.
pub const C_HIGH_FDS_OUTPUT: &str = "high 1\necho by name\npeer 1 1 7\nhigh 1\necho by dummy\n";

/// C, with [`C_COMMON`] in front: outsourced sockets (two UDP associations and a connected TCP
/// socket to the echo server named by argv[1]) closed with `close_range`, their numbers then
/// reused by a pipe, a file and a socket that must behave natively; then the same with
/// `closefrom`. It prints [`C_CLOSE_RANGE_OUTPUT`].
pub const C_CLOSE_RANGE: &str = include_str!("../c/close_range.c");

/// What [`C_CLOSE_RANGE`] prints when the reused numbers behaved natively.
pub const C_CLOSE_RANGE_OUTPUT: &str = "consecutive 1\nreused 1\npipe 9 pipe data\n\
    getsockname ENOTSOCK\nSO_DOMAIN ENOTSOCK\nsocket again 1\necho again\nclosefrom 1 ENOTSOCK 0\n";

/// Compiles the C `parts` (concatenated, e.g. [`C_COMMON`] then [`C_HIGH_FDS`]) with the
/// system's `cc -O1 -Wall` into `dir/name` (dynamically linked: liboutsock reaches a program
/// through the dynamic loader). Returns the binary's path.
///
/// # Errors
/// When the source cannot be written or `cc` fails (its messages are in the error).
pub fn build_c(dir: &Path, name: &str, parts: &[&str]) -> Result<PathBuf> {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, parts.concat()).with_context(|| format!("writing {}", c.display()))?;
    let bin = dir.join(name);
    let out = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&bin)
        .arg(&c)
        .output()
        .context("running cc")?;
    if !out.status.success() {
        bail!("cc {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(bin)
}

/// Builds the Go program `source` (one `main.go`, standard library only) with Debian's
/// golang-go and `CGO_ENABLED=0` — a static binary making raw system calls — into `dir/name`,
/// with its build cache and GOPATH under `dir`. `None` when `go` is not installed.
///
/// # Errors
/// When the source cannot be written or `go build` fails (its messages are in the error).
pub fn build_go(dir: &Path, name: &str, source: &str) -> Result<Option<PathBuf>> {
    if Command::new("go").arg("version").output().is_err() {
        return Ok(None);
    }
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    std::fs::write(src.join("main.go"), source).context("writing main.go")?;
    let bin = dir.join(name);
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg("main.go")
        .current_dir(&src)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", dir.join("go-cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("HOME", dir)
        .env("GOFLAGS", "")
        .output()
        .context("running go build")?;
    if !out.status.success() {
        bail!("go build {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Some(bin))
}
