//! Inbound TCP for guest servers: a listen request opens an IPv6 listener on the identity's
//! address, and every accepted IPv6 peer is delivered to the guest under a dummy IPv4 address
//! from the source pool.
//!
//! Delivery: to a process, an `Inbound` frame on the listen stream with the accepted socket
//! attached (SCM_RIGHTS, see `fdpass`); to a VM, a new stream on the VM's own Unix socket:
//! `CONNECT <vsock_port>\n`, the VMM's `OK ...\n`, then the `Inbound` frame and the relayed bytes.
//! Closing the listen stream closes the listener (accepted connections live on).

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;
use std::time::Duration;

use shared_proto::outsource::ListenRequest;
use shared_proto::{frame, hybrid, Errno, ToGuest};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::config::Settings;
use crate::context::{Request, Shared};
use crate::errno::bind_errno;
use crate::identity::Identity;
use crate::limits::{Permit, Resource};
use crate::metrics::Event;
use crate::ratelimit::LogLimit;

/// Where a listen request binds, decided from the settings alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenPlan {
    /// The host address and port to bind (port 0: any).
    pub bind: SocketAddrV6,
    /// How accepted connections reach the guest.
    pub delivery: Delivery,
}

/// How accepted connections reach the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Attach the accepted socket to an `Inbound` frame on the listen stream.
    PassFd,
    /// Open a stream to the VM's socket and connect to this guest vsock port.
    Vm {
        socket: std::path::PathBuf,
        vsock_port: u32,
    },
}

/// Applies the listen rules: allow-listed ports only (EACCES; a VM's own `allowed_ports` replace
/// the global list for it), the identity's address (a process binds `listen.default_address`,
/// never a VM's: the settings refuse a default address that is a VM's), the port map; a process
/// must ask for descriptor passing and a VM must name a vsock port (EINVAL).
///
/// # Errors
/// The errno the guest's `listen` (or `bind`) reports.
pub fn plan(s: &Settings, identity: &Identity, req: &ListenRequest) -> Result<ListenPlan, Errno> {
    let port = req.addr.port();
    if !s.allowed_ports_for(identity.vm_name()).contains(&port) {
        return Err(Errno::EACCES);
    }
    let (address, delivery) = match identity {
        Identity::Process { .. } => {
            if !req.pass_fd {
                return Err(Errno::EINVAL);
            }
            (s.listen_default_address, Delivery::PassFd)
        }
        Identity::Vm(name) => {
            let vm = s.vms.get(name).ok_or(Errno::EPERM)?;
            if req.vsock_port == 0 || req.pass_fd {
                return Err(Errno::EINVAL);
            }
            (
                vm.address,
                Delivery::Vm {
                    socket: vm.socket.clone(),
                    vsock_port: req.vsock_port,
                },
            )
        }
    };
    Ok(ListenPlan {
        bind: SocketAddrV6::new(address, s.host_port(port), 0, 0),
        delivery,
    })
}

/// A listener ready to run: what the listener actor owns.
#[derive(Debug)]
pub(crate) struct ListenerParts {
    pub stream: UnixStream,
    pub listener: TcpListener,
    pub identity: Identity,
    pub delivery: Delivery,
    /// The guest-visible local address (what the guest bound).
    pub local: SocketAddrV4,
    pub shared: Shared,
    pub permits: (Permit, Permit),
}

fn bind(addr: SocketAddrV6, backlog: u32) -> std::io::Result<TcpListener> {
    let sock = Socket::new(
        Domain::IPV6,
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    sock.set_only_v6(true)?;
    sock.set_reuse_address(true)?;
    sock.bind(&SockAddr::from(addr))?;
    let backlog = i32::try_from(backlog.clamp(1, 4096)).unwrap_or(128);
    sock.listen(backlog)?;
    TcpListener::from_std(sock.into())
}

/// Opens the listener for a listen request and answers it; `None` when refused.
pub(crate) async fn open(
    mut req: Request,
    l: &ListenRequest,
    shared: &Shared,
) -> Option<ListenerParts> {
    let plan = match plan(&shared.settings, &req.identity, l) {
        Ok(p) => p,
        Err(errno) => {
            req.refuse(errno).await;
            return None;
        }
    };
    let listener_permit = match shared.limits.acquire(&req.identity, Resource::Listener) {
        Ok(p) => p,
        Err(errno) => {
            req.refuse(errno).await;
            return None;
        }
    };
    let listener = match bind(plan.bind, l.backlog) {
        Ok(x) => x,
        Err(e) => {
            static LOG: LogLimit = LogLimit::new();
            if LOG.allow() {
                tracing::info!(bind = %plan.bind, error = %e, "cannot listen for a guest");
            }
            drop(listener_permit);
            req.refuse(bind_errno(&e)).await;
            return None;
        }
    };
    let port = listener.local_addr().map_or(0, |a| a.port());
    let guest_port = if l.addr.port() == 0 {
        port
    } else {
        l.addr.port()
    };
    let local = SocketAddrV4::new(*l.addr.ip(), guest_port);
    if crate::framed::write_frame(&mut req.stream, &ToGuest::Listening { local })
        .await
        .is_err()
    {
        return None;
    }
    shared.metrics.record(Event::ListenerOpened);
    tracing::info!(identity = %req.identity, bind = %plan.bind, "listening for a guest");
    Some(ListenerParts {
        stream: req.stream,
        listener,
        identity: req.identity,
        delivery: plan.delivery,
        local,
        shared: shared.clone(),
        permits: (req.permit, listener_permit),
    })
}

/// Accepts until the listen stream closes (or says anything: the protocol has nothing more to
/// say on it) or the server drains.
pub(crate) async fn run(parts: ListenerParts) {
    let ListenerParts {
        stream,
        listener,
        identity,
        delivery,
        local,
        shared,
        permits,
    } = parts;
    let mut draining = shared.draining.clone();
    loop {
        tokio::select! {
            r = stream.readable() => {
                let mut probe = [0u8; 1];
                match stream.try_read(&mut probe) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // EOF, error, or stray bytes: the listen stream is over.
                    _ => break,
                }
                if r.is_err() {
                    break;
                }
            }
            a = listener.accept() => match a {
                Ok((tcp, SocketAddr::V6(peer))) => {
                    deliver(&stream, tcp, peer, local, &identity, &delivery, &shared).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = draining.changed() => break,
        }
    }
    tracing::info!(%identity, "guest listener closed");
    drop(permits);
}

async fn deliver(
    stream: &UnixStream,
    tcp: TcpStream,
    peer: SocketAddrV6,
    local: SocketAddrV4,
    identity: &Identity,
    delivery: &Delivery,
    shared: &Shared,
) {
    let dummy = match shared.mapping.peer_dummy(*peer.ip()).await {
        Ok(d) => d,
        Err(e) => {
            // Without a dummy the guest cannot be shown the peer; refuse the connection rather
            // than invent an address an operator could not trace.
            static LOG: LogLimit = LogLimit::new();
            if LOG.allow() {
                tracing::warn!(peer = %peer, error = %e, "no dummy for inbound peer; closing");
            }
            shared.metrics.record(Event::InboundDropped);
            return;
        }
    };
    let inbound = ToGuest::Inbound {
        peer: SocketAddrV4::new(dummy, peer.port()),
        local,
    };
    match delivery {
        Delivery::PassFd => {
            let Ok(bytes) = frame::to_vec(&inbound) else {
                return;
            };
            let Ok(std) = tcp.into_std() else { return };
            if std.set_nonblocking(false).is_err() {
                return;
            }
            match crate::fdpass::send_with_fd(stream, &bytes, std.as_fd()).await {
                Ok(()) => shared.metrics.record(Event::InboundDelivered),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot pass inbound socket");
                    shared.metrics.record(Event::InboundDropped);
                }
            }
        }
        Delivery::Vm { socket, vsock_port } => {
            let Ok(permit) = shared.limits.acquire(identity, Resource::Socket) else {
                shared.metrics.record(Event::InboundDropped);
                return;
            };
            let shared = shared.clone();
            let socket = socket.clone();
            let port = *vsock_port;
            // Each connection runs on its own task: it outlives the listener, as an accepted
            // socket outlives a closed listening socket.
            actix_rt::spawn(async move {
                match to_vm(&socket, port, &inbound, &shared).await {
                    Ok(vm) => {
                        shared.metrics.record(Event::InboundDelivered);
                        let _pin = shared.mapping.pin(dummy);
                        let s = &shared.settings;
                        if let Ok(m) =
                            crate::relay::relay(&vm, &tcp, &[], s.relay_buffer, s.tcp_idle_timeout)
                                .await
                        {
                            shared.metrics.record(Event::Relayed {
                                up: m.up,
                                down: m.down,
                            });
                        }
                    }
                    Err(e) => {
                        static LOG: LogLimit = LogLimit::new();
                        if LOG.allow() {
                            tracing::warn!(socket = %socket.display(), error = %e, "cannot reach the VM");
                        }
                        shared.metrics.record(Event::InboundDropped);
                    }
                }
                drop(permit);
            });
        }
    }
}

/// Opens a host→guest stream on the VM's socket (hybrid vsock) and sends the `Inbound` frame.
async fn to_vm(
    socket: &std::path::Path,
    port: u32,
    inbound: &ToGuest,
    shared: &Shared,
) -> std::io::Result<UnixStream> {
    let t = shared.settings.vm_connect_timeout;
    let work = async {
        let mut s = UnixStream::connect(socket).await?;
        s.write_all(hybrid::connect_line(port).as_bytes()).await?;
        // Read the answer line byte by byte: what follows it is guest data, not ours to eat.
        let mut line = Vec::with_capacity(hybrid::MAX_LINE);
        loop {
            let b = s.read_u8().await?;
            line.push(b);
            if b == b'\n' || line.len() >= hybrid::MAX_LINE {
                break;
            }
        }
        hybrid::parse_ok(&line).map_err(std::io::Error::other)?;
        let bytes = frame::to_vec(inbound).map_err(std::io::Error::other)?;
        s.write_all(&bytes).await?;
        Ok(s)
    };
    tokio::time::timeout(t, work)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VmSettings;
    use std::net::Ipv4Addr;

    fn settings() -> Settings {
        let mut s = Settings {
            allowed_ports: vec![80, 8080],
            listen_default_address: "fd00:64::1".parse().unwrap(),
            ..Settings::default()
        };
        s.port_map.insert(80, 8081);
        s.vms.insert(
            "web".into(),
            VmSettings::new(
                "/run/outsock/vm-web.vsock",
                "fd00:64::101".parse().unwrap(),
                107,
            ),
        );
        let mut own = VmSettings::new(
            "/run/outsock/vm-db.vsock",
            "fd00:64::102".parse().unwrap(),
            108,
        );
        own.allowed_ports = Some(vec![5432]);
        s.vms.insert("db".into(), own);
        s
    }

    fn req(port: u16, pass_fd: bool, vsock_port: u32) -> ListenRequest {
        ListenRequest {
            addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            backlog: 16,
            pass_fd,
            vsock_port,
        }
    }

    #[test]
    fn plans() {
        let s = settings();
        let proc_ = Identity::Process { uid: 1000 };
        let vm = Identity::Vm("web".into());
        let p = plan(&s, &proc_, &req(8080, true, 0)).unwrap();
        assert_eq!(p.bind, "[fd00:64::1]:8080".parse().unwrap());
        assert_eq!(p.delivery, Delivery::PassFd);
        let p = plan(&s, &vm, &req(80, false, 5000)).unwrap();
        assert_eq!(p.bind, "[fd00:64::101]:8081".parse().unwrap());
        assert_eq!(
            p.delivery,
            Delivery::Vm {
                socket: "/run/outsock/vm-web.vsock".into(),
                vsock_port: 5000
            }
        );
        assert_eq!(plan(&s, &proc_, &req(22, true, 0)), Err(Errno::EACCES));
        assert_eq!(plan(&s, &proc_, &req(0, true, 0)), Err(Errno::EACCES));
        assert_eq!(plan(&s, &proc_, &req(80, false, 0)), Err(Errno::EINVAL));
        assert_eq!(plan(&s, &vm, &req(80, false, 0)), Err(Errno::EINVAL));
        assert_eq!(
            plan(&s, &Identity::Vm("gone".into()), &req(80, false, 1)),
            Err(Errno::EPERM)
        );
    }

    #[test]
    fn a_vms_own_ports_replace_the_global_list() {
        let s = settings();
        let db = Identity::Vm("db".into());
        let p = plan(&s, &db, &req(5432, false, 5432)).unwrap();
        assert_eq!(p.bind, "[fd00:64::102]:5432".parse().unwrap());
        assert_eq!(plan(&s, &db, &req(8080, false, 1)), Err(Errno::EACCES));
        // Others keep the global list.
        let proc_ = Identity::Process { uid: 1000 };
        assert_eq!(plan(&s, &proc_, &req(5432, true, 0)), Err(Errno::EACCES));
    }
}
