//! A VM's listener and UDP server outlive host-server (#15): a simulated guest — the real virtio-vsock device,
//! its muxer and connections on plain vm-memory (outsock-vmm's `fuzzing` fake driver), pumped
//! by a thread of this test as the VMM's event loop would — listens as liboutsock does in a VM
//! (a `Listen` frame naming its vsock port on a guest→host stream kept as the listener's
//! companion) through the real host-server of a test world whose settings name this process's
//! VMM as `vm0`. A world client's connection reaches the guest's vsock port; host-server is
//! killed with SIGKILL and started again; the VMM registers the listener again on its own (the
//! guest hears nothing on its companion meanwhile: no RST, no bytes), and a world client's
//! connection reaches the same guest port again within seconds.
//!
//! The same guest's UDP server (a `Udp` request bound to a port of its own; in a VM the
//! association is the stream itself, `Datagram` frames both ways) echoes a world client's
//! datagrams; after host-server's `kill -9` and restart the VMM opens the association again on
//! its own and a world client's datagrams are echoed again on the same port, while every byte
//! the guest got on its stream still parses as whole frames and the stream was never reset.
//!
//! Traffic stays inside the test world: the client in `world`, host-server in `host`, the VMM's
//! Unix sockets under the world's own directory.

// Test code throughout; helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outsock_e2e::{stack, wait_tcp_listener, wait_udp_bound};
use outsock_vmm::devices::virtio::vsock::fuzz::FakeGuest;
use outsock_vmm::devices::virtio::vsock::packet::{op, Header, TYPE_STREAM};
use outsock_vmm::devices::virtio::vsock::{Muxer, MuxerConfig, VsockDevice, HOST_CID};
use outsock_vmm::devices::virtio::{IrqLine, VirtioDevice, VIRTIO_F_VERSION_1};
use shared_proto::outsource::{Datagram, ListenRequest, UdpRequest};
use shared_proto::{ToGuest, ToHost};
use socket2::{Domain, Socket, Type};
use testworld::addr;
use vmm_sys_util::eventfd::EventFd;

const CID: u64 = 3;
/// host-server's vsock port (the guest image's `transport = vsock:1024`).
const HOST_PORT: u32 = 1024;
/// The guest's end of the companion stream, and its vsock listener's port.
const COMPANION_PORT: u32 = 50_000;
const VSOCK_PORT: u32 = 51_000;
const PORT: u16 = 8090;
const UDP_PORT: u16 = 5390;

/// The guest and its device, shared by the test and the pump thread.
struct Vm {
    guest: FakeGuest,
    dev: VsockDevice,
    /// Every packet the guest received, in order.
    got: Vec<(Header, Vec<u8>)>,
    /// The companion stream's bytes not yet a whole frame, and the frames it brought.
    partial: Vec<u8>,
    frames: Vec<ToGuest>,
}

impl Vm {
    fn send(&mut self, h: Header, data: &[u8]) {
        let h = Header {
            len: data.len() as u32,
            ..h
        };
        self.guest.send(&h, data);
        self.dev.process_tx();
    }
}

fn hdr(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 256 * 1024,
        ..Header::default()
    }
}

/// Pumps the device as the VMM's event loop does (every 2 ms), keeping RX buffers posted,
/// answering each host→guest REQUEST to the vsock listener's port with RESPONSE (the guest
/// kernel accepting it), and reading the companion stream frame by frame as liboutsock does:
/// each `Datagram` is echoed back to its sender (the guest's UDP echo server).
fn pump(vm: &Mutex<Vm>, stop: &std::sync::atomic::AtomicBool) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        {
            let mut vm = vm.lock().unwrap();
            if vm.guest.rx_outstanding() < 16 {
                vm.guest.post_rx(8, 4096);
            }
            vm.dev.process_backend();
            let got = vm.guest.recv();
            for (h, d) in &got {
                if h.op == op::REQUEST && h.dst_port == VSOCK_PORT {
                    vm.send(hdr(VSOCK_PORT, h.src_port, op::RESPONSE), &[]);
                }
                if h.op == op::RW && h.dst_port == COMPANION_PORT {
                    vm.partial.extend_from_slice(d);
                    vm.take_frames();
                }
            }
            vm.got.extend(got);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl Vm {
    /// Takes the whole frames off the companion stream; a `Datagram` is echoed. A byte stream
    /// that is not frames (the guest's reader out of step) panics the pump, failing the test.
    fn take_frames(&mut self) {
        while let Some(total) = shared_proto::frame::frame_len(&self.partial)
            .expect("the guest's stream is in step with its frames")
        {
            if self.partial.len() < total {
                return;
            }
            let frame: Vec<u8> = self.partial.drain(..total).collect();
            let m = shared_proto::decode_exact::<ToGuest>(&frame).expect("a whole frame");
            if let ToGuest::Datagram(d) = &m {
                let echo = shared_proto::to_vec(&ToHost::Datagram(Datagram {
                    addr: d.addr,
                    payload: d.payload.clone(),
                }))
                .unwrap();
                self.send(hdr(COMPANION_PORT, HOST_PORT, op::RW), &echo);
            }
            self.frames.push(m);
        }
    }
}

/// Waits until the guest's packets satisfy `done`, for at most `limit`.
fn wait_for(vm: &Mutex<Vm>, limit: Duration, done: impl Fn(&[(Header, Vec<u8>)]) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done(&vm.lock().unwrap().got) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The bytes the guest received on host-initiated streams to its vsock listener.
fn inbound_bytes(got: &[(Header, Vec<u8>)]) -> Vec<u8> {
    got.iter()
        .filter(|(h, _)| h.op == op::RW && h.dst_port == VSOCK_PORT)
        .flat_map(|(_, d)| d.iter().copied())
        .collect()
}

/// What the guest heard on its companion stream, RESPONSE and credit updates aside.
fn companion_said(got: &[(Header, Vec<u8>)]) -> Vec<(u16, Vec<u8>)> {
    got.iter()
        .filter(|(h, _)| h.dst_port == COMPANION_PORT)
        .filter(|(h, _)| h.op != op::RESPONSE && h.op != op::CREDIT_UPDATE)
        .map(|(h, d)| (h.op, d.clone()))
        .collect()
}

/// A world client connects to the VM's address and port and sends `line`; the connection is
/// returned open (its socket lives in `world`).
fn client(s: &testworld::stack::Stack, line: &'static [u8]) -> TcpStream {
    s.world
        .world()
        .run(move || {
            let sock = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(addr::CLIENT.into(), 0).into())
                .unwrap();
            sock.connect_timeout(
                &SocketAddr::new(addr::HOST_VMS[0].into(), PORT).into(),
                Duration::from_secs(5),
            )
            .unwrap();
            let mut c: TcpStream = sock.into();
            c.write_all(line).unwrap();
            c
        })
        .unwrap()
}

/// A test world whose host-server serves this process's VMM as `vm0`, the VMM's device with a
/// simulated guest, and the thread that pumps it.
struct Rig {
    s: testworld::stack::Stack,
    vm: Arc<Mutex<Vm>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pumper: std::thread::JoinHandle<()>,
    world_dir: std::path::PathBuf,
}

impl Rig {
    fn start(label: &str) -> Option<Self> {
        let world_dir =
            std::env::temp_dir().join(format!("outsock-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&world_dir).unwrap();
        let vm_socket = world_dir.join("vm0.vsock");
        let settings = format!(
            "[listen]\ndefault_address = \"{}\"\nallowed_ports = [{PORT}, {UDP_PORT}]\n[vms.vm0]\nsocket = \"{}\"\naddress = \"{}\"\nvmm_uid = {}\n",
            addr::HOST,
            vm_socket.display(),
            addr::HOST_VMS[0],
            rustix::process::getuid().as_raw()
        );
        let s = stack(label, &settings)?;
        let guest = FakeGuest::new();
        let muxer = Muxer::new(MuxerConfig {
            vm: "vm0".into(),
            cid: CID,
            host_socket: s.host_sock(),
            listen_socket: Some(vm_socket.clone()),
            // host-server runs as this test's user (root).
            peer_uids: vec![rustix::process::getuid().as_raw()],
            take_sockets: true,
        })
        .unwrap();
        let irq = IrqLine::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut dev = VsockDevice::new(CID, guest.mem.clone(), irq, muxer);
        dev.activate(VIRTIO_F_VERSION_1, guest.queues()).unwrap();
        let vm = Arc::new(Mutex::new(Vm {
            guest,
            dev,
            got: Vec::new(),
            partial: Vec::new(),
            frames: Vec::new(),
        }));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pumper = {
            let (vm, stop) = (Arc::clone(&vm), Arc::clone(&stop));
            std::thread::spawn(move || pump(&vm, &stop))
        };
        Some(Self {
            s,
            vm,
            stop,
            pumper,
            world_dir,
        })
    }

    /// The guest opens its companion stream and sends `request` on it; returns host-server's
    /// answer.
    fn ask(&self, request: &ToHost) -> ToGuest {
        self.vm
            .lock()
            .unwrap()
            .send(hdr(COMPANION_PORT, HOST_PORT, op::REQUEST), &[]);
        assert!(wait_for(&self.vm, Duration::from_secs(5), |g| g
            .iter()
            .any(
                |(h, _)| h.dst_port == COMPANION_PORT && h.op == op::RESPONSE
            )));
        let bytes = shared_proto::to_vec(request).unwrap();
        self.vm
            .lock()
            .unwrap()
            .send(hdr(COMPANION_PORT, HOST_PORT, op::RW), &bytes);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(m) = self.vm.lock().unwrap().frames.first() {
                return m.clone();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no answer to {request:?}\n{}", self.s.logs());
    }

    fn finish(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.pumper.join().unwrap();
        self.s.stop_host();
        let _ = std::fs::remove_dir_all(&self.world_dir);
    }
}

#[test]
fn a_vm_listener_serves_again_after_host_server_is_killed_and_restarted() {
    let Some(mut rig) = Rig::start("vmlisten") else {
        return;
    };
    let vm = Arc::clone(&rig.vm);

    // The guest listens as liboutsock does in a VM: a companion stream to host-server, the
    // `Listen` request naming its vsock port, host-server's `Listening`.
    let answer = rig.ask(&ToHost::Listen(ListenRequest {
        addr: format!("0.0.0.0:{PORT}").parse().unwrap(),
        backlog: 16,
        pass_fd: false,
        vsock_port: VSOCK_PORT,
        channel: false,
    }));
    assert!(
        matches!(answer, ToGuest::Listening { .. }),
        "{answer:?}\n{}",
        rig.s.logs()
    );
    let s = &mut rig.s;
    wait_tcp_listener(s, PORT, "host-server's listener for vm0", |l| {
        l.contains(&format!(":{PORT}"))
    });

    // A world client reaches the guest's listener.
    let _first = client(s, b"before the crash\n");
    let reached = wait_for(&vm, Duration::from_secs(10), |g| {
        inbound_bytes(g)
            .windows(17)
            .any(|w| w == b"before the crash\n")
    });
    assert!(reached, "the first client's bytes\n{}", s.logs());
    let heard_before = companion_said(&vm.lock().unwrap().got).len();

    // host-server dies as in a crash, and comes back.
    s.kill_host();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    s.start_host().unwrap();
    wait_tcp_listener(
        s,
        PORT,
        "host-server's listener for vm0, registered again",
        |l| l.contains(&format!(":{PORT}")),
    );
    let _second = client(s, b"after the restart\n");
    let reached = wait_for(&vm, Duration::from_secs(10), |g| {
        inbound_bytes(g)
            .windows(18)
            .any(|w| w == b"after the restart\n")
    });
    let took = started.elapsed();
    assert!(reached, "the second client's bytes\n{}", s.logs());
    println!(
        "a world client reached the guest's listener {took:?} after host-server was started again"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    let v = vm.lock().unwrap();
    let said = companion_said(&v.got);
    assert_eq!(
        said.len(),
        heard_before,
        "the guest heard something on its companion: {:?}",
        &said[heard_before..]
    );
    registered_again_once(&v);
    drop(v);
    rig.finish();
}

/// A world client sends `payload` to the VM's address and UDP port every 200 ms until the same
/// bytes come back from there (true) or `limit` passes (false).
fn echoed(s: &testworld::stack::Stack, payload: &'static [u8], limit: Duration) -> bool {
    s.world
        .world()
        .run(move || {
            let sock = Socket::new(Domain::IPV6, Type::DGRAM, None).unwrap();
            sock.bind(&SocketAddr::new(addr::CLIENT.into(), 0).into())
                .unwrap();
            let sock: UdpSocket = sock.into();
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let server = SocketAddr::new(addr::HOST_VMS[0].into(), UDP_PORT);
            let deadline = Instant::now() + limit;
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                sock.send_to(payload, server).unwrap();
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if &buf[..n] == payload && from == server {
                        return true;
                    }
                }
            }
            false
        })
        .unwrap()
}

#[test]
fn a_vm_udp_server_echoes_again_after_host_server_is_killed_and_restarted() {
    let Some(mut rig) = Rig::start("vmudp") else {
        return;
    };
    // The guest's UDP server: its association bound to a port of its own.
    let answer = rig.ask(&ToHost::Udp(UdpRequest {
        bind: format!("0.0.0.0:{UDP_PORT}").parse().unwrap(),
        channel: false,
    }));
    assert!(
        matches!(answer, ToGuest::Associated { local } if local.port() == UDP_PORT),
        "{answer:?}\n{}",
        rig.s.logs()
    );
    wait_udp_bound(&rig.s, UDP_PORT);
    assert!(
        echoed(&rig.s, b"before the crash", Duration::from_secs(10)),
        "no echo before the crash\n{}",
        rig.s.logs()
    );

    // host-server dies as in a crash, and comes back.
    rig.s.kill_host();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    rig.s.start_host().unwrap();
    wait_udp_bound(&rig.s, UDP_PORT);
    assert!(
        echoed(&rig.s, b"after the restart", Duration::from_secs(10)),
        "no echo after the restart\n{}",
        rig.s.logs()
    );
    let took = started.elapsed();
    println!("a world client's datagram was echoed {took:?} after host-server was started again");
    assert!(took < Duration::from_secs(10), "{took:?}");

    let v = rig.vm.lock().unwrap();
    // The stream was never reset nor ended, and every byte on it parsed as whole frames (the
    // pump reads it frame by frame): the answer, then datagrams only.
    let ends: Vec<_> = v
        .got
        .iter()
        .filter(|(h, _)| h.dst_port == COMPANION_PORT)
        .filter(|(h, _)| h.op == op::RST || h.op == op::SHUTDOWN)
        .collect();
    assert!(ends.is_empty(), "{ends:?}");
    assert!(v.partial.is_empty(), "left mid-frame: {:?}", v.partial);
    assert!(
        v.frames[1..]
            .iter()
            .all(|m| matches!(m, ToGuest::Datagram(_))),
        "{:?}",
        v.frames
    );
    registered_again_once(&v);
    drop(v);
    rig.finish();
}

/// The VMM registered the companion again once, none refused, and it is live.
fn registered_again_once(v: &Vm) {
    assert_eq!(v.dev.muxer().reregistrations(), (1, 0));
    assert!(v
        .dev
        .muxer()
        .connection(HOST_PORT, COMPANION_PORT)
        .is_some_and(|c| c.is_companion() && !c.registering_again()));
}
