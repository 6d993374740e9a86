//! outsock-dns-forwarder: the guest image's DNS server on 127.0.0.1:53 (UDP and TCP).
//!
//! glibc's resolver makes its socket calls inside libc, where liboutsock cannot see them
//! (DESIGN.md §7), so in the VM /etc/resolv.conf names 127.0.0.1 and this small forwarder
//! carries each query to the guest DNS address through host-server, which answers it with
//! dns-cache: UDP queries over one outsourcing UDP association (reopened when host-server
//! restarts), each TCP connection over its own relayed outsourced connect. Loopback stays
//! local, so the preloaded shim leaves its own sockets alone.
//!
//! Settings: `--listen ADDR` (127.0.0.1:53), `--vsock-port N` and `--dns ADDR:PORT`, which
//! default to `transport=vsock:N` and `dns=ADDR` in /etc/outsock/shim.conf (port 53).
//!
//! What it reads from programs and from host-server is parsed in the library (`lib.rs`), which
//! the fuzz target `guest_forwarder` drives. No `unsafe`: the vsock streams to the host come
//! from socket2.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use outsock_dns_forwarder::{recv, Pending};
use shared_proto::outsource::{ConnectRequest, UdpRequest};
use shared_proto::translate::{
    config_value, parse_transport, DEFAULT_GUEST_DNS, GUEST_CONFIG_FILE, HOST_CID,
};
use shared_proto::{to_vec, ToGuest, ToHost};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};

#[derive(Debug, Clone, Copy)]
struct Settings {
    listen: SocketAddr,
    vsock_port: u32,
    dns: SocketAddrV4,
}

fn settings() -> Result<Settings, String> {
    let file = std::fs::read_to_string(GUEST_CONFIG_FILE).unwrap_or_default();
    let value = |key: &str| config_value(&file, key);
    let mut s = Settings {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 53)),
        vsock_port: value("transport")
            .and_then(parse_transport)
            .flatten()
            .unwrap_or(1024),
        dns: SocketAddrV4::new(
            value("dns")
                .and_then(|d| d.parse().ok())
                .unwrap_or(*DEFAULT_GUEST_DNS.ip()),
            53,
        ),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag} {v}: invalid value");
        match flag.as_str() {
            "--listen" => s.listen = v.parse().map_err(|_| bad())?,
            "--vsock-port" => s.vsock_port = v.parse().map_err(|_| bad())?,
            "--dns" => s.dns = v.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(s)
}

/// A stream to host-server: AF_VSOCK to the host, bridged by the VMM.
fn open_stream(port: u32) -> io::Result<File> {
    // socket2 makes it close-on-exec, as std does for its own sockets.
    let sock = Socket::new(Domain::VSOCK, Type::STREAM, None)?;
    sock.connect(&SockAddr::vsock(HOST_CID, port))?;
    Ok(File::from(OwnedFd::from(sock)))
}

fn send(w: &mut File, msg: &ToHost) -> io::Result<()> {
    let bytes = to_vec(msg).map_err(|e| io::Error::other(e.to_string()))?;
    w.write_all(&bytes)
}

fn shutdown_write(f: &File) {
    let _ = SockRef::from(f).shutdown(Shutdown::Write);
}

type Shared = Arc<Mutex<Pending>>;

/// The UDP side: one association, reopened whenever it breaks.
fn serve_udp(s: Settings, udp: &UdpSocket) {
    let pending: Shared = Arc::default();
    let mut assoc: Option<File> = None;
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, client)) = udp.recv_from(&mut buf) else {
            continue;
        };
        let Some(dg) = pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .query(
                buf.get(..n).unwrap_or_default(),
                client,
                s.dns,
                Instant::now(),
            )
        else {
            continue;
        };
        // One retry with a fresh association: the old one may have died with host-server.
        for _ in 0..2 {
            if assoc.is_none() {
                assoc = open_association(s, udp, &pending)
                    .map_err(|e| eprintln!("outsock-dns-forwarder: UDP association: {e}"))
                    .ok();
            }
            let Some(w) = assoc.as_mut() else { break };
            if send(w, &dg).is_ok() {
                break;
            }
            assoc = None;
        }
    }
}

fn open_association(s: Settings, udp: &UdpSocket, pending: &Shared) -> io::Result<File> {
    let mut stream = open_stream(s.vsock_port)?;
    send(
        &mut stream,
        &ToHost::Udp(UdpRequest {
            bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            channel: false,
        }),
    )?;
    match recv(&mut stream)? {
        ToGuest::Associated { .. } => {}
        other => return Err(io::Error::other(format!("answer {other:?}"))),
    }
    let mut reader = stream.try_clone()?;
    let udp = udp.try_clone()?;
    let pending = pending.clone();
    std::thread::spawn(move || {
        // Ends when the association closes; the next query opens a new one.
        while let Ok(msg) = recv(&mut reader) {
            let reply = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reply(msg);
            if let Some((payload, client)) = reply {
                let _ = udp.send_to(&payload, client);
            }
        }
    });
    Ok(stream)
}

/// One TCP client: a relayed outsourced connect to the guest DNS address, bytes both ways.
fn serve_tcp_client(s: Settings, client: TcpStream) -> io::Result<()> {
    let mut stream = open_stream(s.vsock_port)?;
    send(
        &mut stream,
        &ToHost::Connect(ConnectRequest {
            dest: s.dns,
            pass_fd: false,
            nonblocking: false,
        }),
    )?;
    match recv(&mut stream)? {
        ToGuest::Connected { .. } => {}
        other => return Err(io::Error::other(format!("answer {other:?}"))),
    }
    let mut up_from = client.try_clone()?;
    let mut up_to = stream.try_clone()?;
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut up_from, &mut up_to);
        shutdown_write(&up_to);
    });
    let mut down_to = client;
    let _ = io::copy(&mut stream, &mut down_to);
    let _ = down_to.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

fn main() -> ExitCode {
    let s = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("outsock-dns-forwarder: {e}");
            return ExitCode::from(2);
        }
    };
    let udp = match UdpSocket::bind(s.listen) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("outsock-dns-forwarder: cannot bind UDP {}: {e}", s.listen);
            return ExitCode::from(1);
        }
    };
    let tcp = match TcpListener::bind(s.listen) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("outsock-dns-forwarder: cannot bind TCP {}: {e}", s.listen);
            return ExitCode::from(1);
        }
    };
    std::thread::spawn(move || serve_udp(s, &udp));
    for client in tcp.incoming().flatten() {
        std::thread::spawn(move || {
            if let Err(e) = serve_tcp_client(s, client) {
                eprintln!("outsock-dns-forwarder: TCP query: {e}");
            }
        });
    }
    ExitCode::SUCCESS
}
