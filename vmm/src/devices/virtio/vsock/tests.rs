//! Device and muxer tests on plain memory (virtio-queue mock queues, a fake guest driver) and
//! real Unix sockets standing in for host-server and host processes. No KVM.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use shared_proto::outsource::{ToHost, VmHello};

use super::connection::{BULK_WINDOW, CREDIT_UPDATE_AFTER, TX_BUF_SIZE};
use super::device::VsockDevice;
use super::fuzz::{activated_device, fuzz_one, FakeGuest};
use super::packet::{op, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{RX_QUEUE, TX_QUEUE};

const CID: u64 = 3;
const GUEST_PORT: u32 = 40_000;
const HOST_PORT: u32 = 1024;

struct Rig {
    guest: FakeGuest,
    dev: VsockDevice,
    host: UnixListener,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let host = UnixListener::bind(dir.path().join("host.sock")).expect("bind host.sock");
        let guest = FakeGuest::new();
        let vm_sock = dir.path().join("vm0.vsock");
        let dev = activated_device(&guest, CID, &dir.path().join("host.sock"), Some(&vm_sock));
        Self {
            guest,
            dev,
            host,
            dir,
        }
    }

    /// A rig without a VM socket whose VMM says it takes sockets, or not.
    fn without_vm_socket(take_sockets: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let host = UnixListener::bind(dir.path().join("host.sock")).expect("bind host.sock");
        let guest = FakeGuest::new();
        let dev = super::fuzz::activated_device_with(
            &guest,
            CID,
            &dir.path().join("host.sock"),
            None,
            take_sockets,
        );
        Self {
            guest,
            dev,
            host,
            dir,
        }
    }

    /// The guest opens a stream to HOST_PORT: host-server's end (the hello unread), once the
    /// guest has its RESPONSE.
    fn open_stream(&mut self) -> UnixStream {
        self.send(self.hdr(op::REQUEST), &[]);
        let (s, _) = self.host.accept().expect("the VMM connected to host.sock");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(self.recv(1)[0].0.op, op::RESPONSE);
        s
    }

    /// The guest's connection (GUEST_PORT to HOST_PORT), which must exist.
    fn conn(&self) -> &super::connection::Connection {
        self.dev
            .muxer()
            .connection(HOST_PORT, GUEST_PORT)
            .expect("the guest's connection")
    }

    fn hdr(&self, op: u16) -> Header {
        Header {
            src_cid: CID,
            dst_cid: 2,
            src_port: GUEST_PORT,
            dst_port: HOST_PORT,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Header::default()
        }
    }

    fn send(&mut self, h: Header, data: &[u8]) {
        let h = Header {
            len: data.len() as u32,
            ..h
        };
        self.guest.send(&h, data);
        assert!(self.dev.process_tx());
        assert_eq!(
            self.guest.used(TX_QUEUE).len(),
            1,
            "TX chains are always consumed"
        );
    }

    /// Runs the backend until `n` packets arrived or 5 s passed.
    fn recv(&mut self, n: usize) -> Vec<(Header, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < n && Instant::now() < deadline {
            if self.guest.rx_outstanding() < 8 {
                self.guest.post_rx(1, 4096);
            }
            self.dev.process_backend();
            got.extend(self.guest.recv());
            if got.len() < n {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        got
    }

    /// Guest connects to HOST_PORT; returns host-server's end after checking the hello.
    fn connect(&mut self) -> UnixStream {
        self.send(self.hdr(op::REQUEST), &[]);
        let (mut s, _) = self.host.accept().expect("the VMM connected to host.sock");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let resp = self.recv(1);
        assert_eq!(resp[0].0.op, op::RESPONSE);
        assert_eq!(
            (resp[0].0.src_port, resp[0].0.dst_port, resp[0].0.dst_cid),
            (HOST_PORT, GUEST_PORT, CID)
        );
        assert_eq!(resp[0].0.buf_alloc, TX_BUF_SIZE);
        let hello = read_frame(&mut s);
        assert_eq!(
            hello,
            ToHost::Hello(VmHello {
                vm: "vm0".into(),
                cid: CID as u32,
                port: HOST_PORT,
                takes_sockets: false,
            })
        );
        s
    }
}

/// host-server's end read on a thread until at least `n` bytes came: the count and the stream.
fn read_at_least(mut host: UnixStream, n: usize) -> std::thread::JoinHandle<(usize, UnixStream)> {
    std::thread::spawn(move || {
        let mut total = 0usize;
        let mut b = vec![0u8; 65536];
        while total < n {
            total += host.read(&mut b).expect("read");
        }
        (total, host)
    })
}

fn read_frame(s: &mut UnixStream) -> ToHost {
    let mut head = vec![0u8; shared_proto::frame::HEADER_LEN];
    s.read_exact(&mut head).expect("frame header");
    let total = shared_proto::frame::frame_len(&head)
        .expect("valid header")
        .expect("complete header");
    let mut all = head;
    all.resize(total, 0);
    s.read_exact(&mut all[shared_proto::frame::HEADER_LEN..])
        .expect("frame body");
    shared_proto::decode_exact(&all).expect("a ToHost frame")
}

#[test]
fn guest_connect_writes_the_hello_first_then_data_both_ways() {
    let mut rig = Rig::new();
    let mut host = rig.connect();
    rig.send(rig.hdr(op::RW), b"hello host");
    let mut b = [0u8; 10];
    host.read_exact(&mut b).expect("guest bytes");
    assert_eq!(&b, b"hello host");
    host.write_all(b"hello guest").expect("write");
    let got = rig.recv(1);
    assert_eq!(got[0].0.op, op::RW);
    assert_eq!(got[0].1, b"hello guest");
    assert_eq!(
        got[0].0.fwd_cnt, 10,
        "fwd_cnt counts guest bytes written, not the hello"
    );
    assert_eq!(rig.dev.muxer().connection_count(), 1);
}

#[test]
fn host_connect_handshake_answers_ok_once_the_guest_accepts() {
    let mut rig = Rig::new();
    let path = rig.dir.path().join("vm0.vsock");
    let mut h = UnixStream::connect(&path).expect("connect to the VM socket");
    h.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    h.write_all(b"CONNECT 5000\n").expect("write");
    let req = rig.recv(1);
    assert_eq!(req[0].0.op, op::REQUEST);
    assert_eq!(req[0].0.dst_port, 5000);
    let local = req[0].0.src_port;
    assert!(local >= 1 << 30);
    // Guest accepts.
    let resp = Header {
        src_cid: CID,
        dst_cid: 2,
        src_port: 5000,
        dst_port: local,
        type_: TYPE_STREAM,
        op: op::RESPONSE,
        buf_alloc: 64 * 1024,
        ..Header::default()
    };
    rig.send(resp, &[]);
    let mut line = [0u8; 14];
    h.read_exact(&mut line).expect("OK line");
    assert_eq!(&line, format!("OK {local}\n").as_bytes());
    h.write_all(b"inbound").expect("write");
    let got = rig.recv(1);
    assert_eq!(got[0].1, b"inbound");
    rig.send(Header { op: op::RW, ..resp }, b"reply");
    let mut b = [0u8; 5];
    h.read_exact(&mut b).expect("reply");
    assert_eq!(&b, b"reply");

    // A second CONNECT to a port nobody listens on: the guest answers RST and the host
    // stream closes without an OK.
    let mut h2 = UnixStream::connect(&path).expect("connect");
    h2.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    h2.write_all(b"CONNECT 6000\n").expect("write");
    let req = rig.recv(1);
    assert_eq!((req[0].0.op, req[0].0.dst_port), (op::REQUEST, 6000));
    rig.send(
        Header {
            src_port: 6000,
            dst_port: req[0].0.src_port,
            op: op::RST,
            ..resp
        },
        &[],
    );
    let mut rest = Vec::new();
    h2.read_to_end(&mut rest).expect("EOF");
    assert!(rest.is_empty());
    // Garbage instead of CONNECT: closed.
    let mut h3 = UnixStream::connect(&path).expect("connect");
    h3.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    h3.write_all(b"HELLO there\n").expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rest = Vec::new();
    while Instant::now() < deadline {
        rig.dev.process_backend();
        h3.set_nonblocking(true).expect("nonblocking");
        match h3.read_to_end(&mut rest) {
            Ok(_) => break,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    assert!(rest.is_empty());
    assert_eq!(rig.dev.muxer().connection_count(), 1);
}

#[test]
fn credit_exhaustion_stops_reading_until_the_guest_updates() {
    let mut rig = Rig::new();
    let mut host = rig.connect();
    // The guest has only 100 bytes of receive buffer.
    rig.send(
        Header {
            buf_alloc: 100,
            ..rig.hdr(op::CREDIT_UPDATE)
        },
        &[],
    );
    host.write_all(&[7u8; 300]).expect("write");
    let got = rig.recv(2);
    assert_eq!(got[0].0.op, op::RW);
    assert_eq!(got[0].1.len(), 100);
    assert_eq!(got[1].0.op, op::CREDIT_REQUEST);
    // Nothing more while the credit is used up.
    let more = rig.recv(1);
    assert!(more.is_empty(), "{more:?}");
    // The guest consumed 100 bytes.
    rig.send(
        Header {
            buf_alloc: 100,
            fwd_cnt: 100,
            ..rig.hdr(op::CREDIT_UPDATE)
        },
        &[],
    );
    let got = rig.recv(1);
    assert_eq!((got[0].0.op, got[0].1.len()), (op::RW, 100));
}

#[test]
fn the_guest_is_asked_for_credit_early_but_not_again_while_its_reader_stops() {
    let mut rig = Rig::new();
    let mut host = rig.connect();
    // The guest has 1000 bytes of receive buffer.
    let base = rig.hdr(op::CREDIT_UPDATE);
    let update = |fwd_cnt| Header {
        buf_alloc: 1000,
        fwd_cnt,
        ..base
    };
    rig.send(update(0), &[]);
    // 600 bytes sent: 400 left (under half), a quarter or more sent since asking: asked now,
    // with credit left.
    host.write_all(&[7u8; 600]).expect("write");
    let got = rig.recv(2);
    assert_eq!((got[0].0.op, got[0].1.len()), (op::RW, 600));
    assert_eq!(got[1].0.op, op::CREDIT_REQUEST);
    // The guest's reader has taken nothing yet: the rest of the credit, then the one request
    // for credit at zero.
    rig.send(update(0), &[]);
    host.write_all(&[7u8; 1000]).expect("write");
    let got = rig.recv(2);
    assert_eq!((got[0].0.op, got[0].1.len()), (op::RW, 400));
    assert_eq!(got[1].0.op, op::CREDIT_REQUEST);
    // Its reader has stopped: answers without progress are asked nothing more.
    rig.send(update(0), &[]);
    rig.send(update(0), &[]);
    let more = rig.recv(1);
    assert!(more.is_empty(), "{more:?}");
    // It took 300 bytes: 300 more come (and, with half the buffer or more still unread, no
    // early request).
    rig.send(update(300), &[]);
    let got = rig.recv(2);
    assert_eq!((got[0].0.op, got[0].1.len()), (op::RW, 300));
    assert_eq!(got[1].0.op, op::CREDIT_REQUEST, "at zero again");
    assert_eq!(got.len(), 2);
}

#[test]
fn a_connection_that_moved_a_window_gets_the_bulk_window() {
    let mut rig = Rig::new();
    let host = rig.connect();
    let reader = read_at_least(host, TX_BUF_SIZE as usize);
    // Within the starting window's credit, as the guest would.
    let chunk = vec![1u8; 32 * 1024];
    let mut sent = 0;
    let mut seen = Vec::new();
    while sent < TX_BUF_SIZE as usize {
        rig.send(rig.hdr(op::RW), &chunk);
        sent += chunk.len();
        seen.extend(rig.recv(1));
    }
    let (_, _host) = reader.join().expect("reader");
    seen.extend(rig.recv(1));
    let windows: Vec<u32> = seen.iter().map(|(h, _)| h.buf_alloc).collect();
    assert_eq!(windows.first(), Some(&TX_BUF_SIZE), "{windows:?}");
    assert_eq!(windows.last(), Some(&BULK_WINDOW), "{windows:?}");
    assert!(rig.conn().has_bulk_window());
    // The guest may now have BULK_WINDOW bytes unwritten here: more than the starting window
    // is taken, not reset.
    let chunk = vec![2u8; 64 * 1024];
    for _ in 0..(TX_BUF_SIZE as usize / chunk.len() + 2) {
        rig.send(rig.hdr(op::RW), &chunk);
    }
    assert!(rig.dev.muxer().connection(HOST_PORT, GUEST_PORT).is_some());
}

#[test]
fn bulk_windows_are_granted_within_the_vms_budget() {
    use super::muxer::BULK_WINDOWS;
    let mut rig = Rig::new();
    let window = TX_BUF_SIZE as usize;
    let chunk = vec![3u8; 32 * 1024];
    let mut readers = Vec::new();
    // Guest ports of the connections; each moves a starting window's worth to a host side
    // that reads everything.
    let ports: Vec<u32> = (0..=BULK_WINDOWS as u32)
        .map(|i| GUEST_PORT + 1 + i)
        .collect();
    let hdr = |rig: &Rig, port: u32, op: u16| Header {
        src_port: port,
        ..rig.hdr(op)
    };
    // A window's worth from guest port `port`, all of it written to the stream (what the
    // stream did not take at once goes as its reader drains it).
    let move_a_window = |rig: &mut Rig, port: u32| {
        for _ in 0..window / chunk.len() {
            rig.send(hdr(rig, port, op::RW), &chunk);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while rig
            .dev
            .muxer()
            .connection(HOST_PORT, port)
            .is_some_and(|c| c.tx_buffered() > 0)
            && Instant::now() < deadline
        {
            rig.dev.process_backend();
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    for &port in &ports {
        rig.send(hdr(&rig, port, op::REQUEST), &[]);
        let (mut s, _) = rig.host.accept().expect("the VMM connected to host.sock");
        // The RESPONSE, after the earlier connections' credit updates.
        let mut responded = false;
        for _ in 0..16 {
            responded = rig
                .recv(1)
                .iter()
                .any(|(h, _)| h.op == op::RESPONSE && h.dst_port == port);
            if responded {
                break;
            }
        }
        assert!(responded, "no RESPONSE for {port}");
        readers.push(std::thread::spawn(move || {
            let mut b = vec![0u8; 65536];
            while s.read(&mut b).is_ok_and(|n| n > 0) {}
        }));
        move_a_window(&mut rig, port);
    }
    // Every one of them asked; only BULK_WINDOWS were granted, in the order they asked.
    let bulk = |rig: &Rig, port: u32| {
        rig.dev
            .muxer()
            .connection(HOST_PORT, port)
            .expect("open")
            .has_bulk_window()
    };
    let granted: Vec<bool> = ports.iter().map(|&p| bulk(&rig, p)).collect();
    assert_eq!(granted.iter().filter(|b| **b).count(), BULK_WINDOWS);
    assert!(!granted[BULK_WINDOWS], "the last one over the budget");
    // One bulk connection ends: the next window's worth the last one moves gets it one.
    rig.send(hdr(&rig, ports[0], op::RST), &[]);
    let last = ports[BULK_WINDOWS];
    move_a_window(&mut rig, last);
    assert!(bulk(&rig, last));
    // The host sides close: the readers end.
    crate::devices::virtio::VirtioDevice::reset(&mut rig.dev);
    for r in readers {
        r.join().expect("reader");
    }
}

#[test]
fn forwarded_guest_bytes_earn_a_credit_update() {
    let mut rig = Rig::new();
    let host = rig.connect();
    let reader = read_at_least(host, CREDIT_UPDATE_AFTER as usize);
    let chunk = vec![1u8; 32 * 1024];
    let mut sent = 0;
    while sent < CREDIT_UPDATE_AFTER as usize {
        rig.send(rig.hdr(op::RW), &chunk);
        sent += chunk.len();
    }
    let (total, _host) = reader.join().expect("reader");
    assert!(total >= CREDIT_UPDATE_AFTER as usize);
    let got = rig.recv(1);
    assert_eq!(got[0].0.op, op::CREDIT_UPDATE);
    assert_eq!(got[0].0.fwd_cnt as usize, sent);
    // A CREDIT_REQUEST is answered with our credit.
    rig.send(rig.hdr(op::CREDIT_REQUEST), &[]);
    let got = rig.recv(1);
    assert_eq!(got[0].0.op, op::CREDIT_UPDATE);
}

#[test]
fn a_guest_ignoring_credit_is_reset_and_the_vmm_carries_on() {
    let mut rig = Rig::new();
    let _host = rig.connect(); // never read: the socket buffer fills, then ours
    let chunk = vec![9u8; 64 * 1024];
    let mut reset = false;
    for _ in 0..64 {
        rig.send(rig.hdr(op::RW), &chunk);
        if rig.dev.muxer().connection(HOST_PORT, GUEST_PORT).is_none()
            || rig
                .dev
                .muxer()
                .connection(HOST_PORT, GUEST_PORT)
                .is_some_and(|c| c.state() == super::connection::State::Closed)
        {
            reset = true;
            break;
        }
        assert!(
            rig.dev
                .muxer()
                .connection(HOST_PORT, GUEST_PORT)
                .is_some_and(|c| c.tx_buffered() <= TX_BUF_SIZE as usize),
            "the buffer stays bounded"
        );
    }
    assert!(reset, "more than the credit was accepted");
    let got = rig.recv(1);
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!(rig.dev.muxer().connection_count(), 0);
    // The device still works: a new connection.
    let mut h2 = rig.connect();
    rig.send(rig.hdr(op::RW), b"ok");
    let mut b = [0u8; 2];
    h2.read_exact(&mut b).expect("read");
}

#[test]
fn shutdown_both_ways_ends_with_rst() {
    let mut rig = Rig::new();
    let mut host = rig.connect();
    rig.send(rig.hdr(op::RW), b"last words");
    rig.send(
        Header {
            flags: SHUTDOWN_SEND,
            ..rig.hdr(op::SHUTDOWN)
        },
        &[],
    );
    let mut all = Vec::new();
    host.read_to_end(&mut all)
        .expect("EOF after the guest's half-close");
    assert_eq!(all, b"last words");
    // The host still sends, then closes.
    host.write_all(b"bye").expect("write after half-close");
    drop(host);
    let got = rig.recv(3);
    let ops: Vec<u16> = got.iter().map(|p| p.0.op).collect();
    assert_eq!(ops, [op::RW, op::SHUTDOWN, op::RST], "{got:?}");
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    assert_eq!(rig.dev.muxer().connection_count(), 0);

    // Guest closes first with both flags: RST once the buffer is written.
    let host = rig.connect();
    rig.send(
        Header {
            flags: SHUTDOWN_SEND | SHUTDOWN_RCV,
            ..rig.hdr(op::SHUTDOWN)
        },
        &[],
    );
    let got = rig.recv(1);
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!(rig.dev.muxer().connection_count(), 0);
    drop(host);
}

/// A guest that closes one connection and opens the next at once: the batch's REQUEST is
/// answered (and the guest interrupted) before the closed stream is shut and its RST sent; a
/// later packet of the closed stream itself never passes its end.
#[test]
fn a_streams_end_waits_for_the_packets_after_it_but_never_passes_its_own() {
    let mut rig = Rig::new();
    let mut old = rig.connect();
    rig.guest.post_rx(8, 4096);
    let end = Header {
        flags: SHUTDOWN_SEND | SHUTDOWN_RCV,
        ..rig.hdr(op::SHUTDOWN)
    };
    let next = Header {
        src_port: GUEST_PORT + 1,
        ..rig.hdr(op::REQUEST)
    };
    rig.guest.send(&end, &[]);
    rig.guest.send(&next, &[]);
    rig.dev.process_tx();
    assert_eq!(rig.guest.used(TX_QUEUE).len(), 2, "both TX chains consumed");
    let first: Vec<(u16, u32)> = rig
        .guest
        .recv()
        .iter()
        .map(|(h, _)| (h.op, h.dst_port))
        .collect();
    assert_eq!(
        first,
        [(op::RESPONSE, GUEST_PORT + 1)],
        "the new stream's RESPONSE first, alone"
    );
    // The end was handled in the same call: the old stream is shut, its RST is next.
    let mut rest = Vec::new();
    old.read_to_end(&mut rest)
        .expect("EOF on the closed stream's host side");
    let got = rig.recv(1);
    assert_eq!((got[0].0.op, got[0].0.dst_port), (op::RST, GUEST_PORT));
    let (_new_host, _) = rig.host.accept().expect("the new stream's host.sock");
    assert_eq!(rig.dev.muxer().connection_count(), 1);

    // An RST followed by a REQUEST of the same stream (the guest reused its port): the RST
    // goes first, and the new connection lives.
    rig.guest.send(
        &Header {
            src_port: GUEST_PORT + 1,
            ..rig.hdr(op::RST)
        },
        &[],
    );
    rig.guest.send(&next, &[]);
    rig.dev.process_tx();
    assert_eq!(rig.guest.used(TX_QUEUE).len(), 2);
    let (_again, _) = rig
        .host
        .accept()
        .expect("the reused port's new host.sock stream");
    let got = rig.recv(1);
    assert_eq!(
        (got[0].0.op, got[0].0.dst_port),
        (op::RESPONSE, GUEST_PORT + 1)
    );
    assert_eq!(rig.dev.muxer().connection_count(), 1);
    assert!(rig
        .dev
        .muxer()
        .connection(HOST_PORT, GUEST_PORT + 1)
        .is_some());
}

#[test]
fn guest_rst_closes_the_host_stream() {
    let mut rig = Rig::new();
    let mut host = rig.connect();
    rig.send(rig.hdr(op::RST), &[]);
    assert_eq!(rig.dev.muxer().connection_count(), 0);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).expect("EOF");
    assert!(rig.recv(1).is_empty(), "no answer to an RST");
}

#[test]
fn host_server_down_means_rst() {
    let mut rig = Rig::new();
    std::fs::remove_file(rig.dir.path().join("host.sock")).expect("rm");
    rig.send(rig.hdr(op::REQUEST), &[]);
    let got = rig.recv(1);
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!(rig.dev.muxer().connection_count(), 0);
}

#[test]
fn malformed_packets_get_rst_or_are_dropped() {
    let mut rig = Rig::new();
    // From another CID: dropped silently.
    rig.send(
        Header {
            src_cid: 9,
            ..rig.hdr(op::REQUEST)
        },
        &[],
    );
    // To a CID other than the host: dropped.
    rig.send(
        Header {
            dst_cid: 7,
            ..rig.hdr(op::REQUEST)
        },
        &[],
    );
    assert!(rig.recv(1).is_empty());
    assert_eq!(rig.dev.muxer().connection_count(), 0);
    // SEQPACKET is not offered: RST. RW without a connection: RST. Unknown op: RST.
    rig.send(
        Header {
            type_: 2,
            ..rig.hdr(op::REQUEST)
        },
        &[],
    );
    rig.send(rig.hdr(op::RW), b"x");
    rig.send(rig.hdr(42), &[]);
    let got = rig.recv(3);
    assert!(got.iter().all(|p| p.0.op == op::RST), "{got:?}");
    assert_eq!(got.len(), 3);
    // A header claiming more data than its descriptor holds, a write-only TX descriptor, a
    // header descriptor shorter than a header: consumed, nothing else happens.
    let bad = Header {
        len: 5000,
        ..rig.hdr(op::RW)
    };
    rig.guest.send(&bad, b"short");
    rig.guest.push_chain(TX_QUEUE, &[(0x20_0000, 44, true)]);
    rig.guest.push_chain(TX_QUEUE, &[(0x20_0000, 10, false)]);
    rig.guest.push_chain(TX_QUEUE, &[(u64::MAX - 8, 44, false)]);
    assert!(rig.dev.process_tx());
    assert_eq!(rig.guest.used(TX_QUEUE).len(), 4);
    // An RX chain the device cannot write (on a fresh guest, so it is the first one): given
    // back with length 0.
    let mut fresh = Rig::new();
    fresh.send(fresh.hdr(op::RW), b"y");
    let head = fresh.guest.push_chain(RX_QUEUE, &[(0x30_0000, 44, false)]);
    assert!(fresh.dev.process_rx());
    assert_eq!(fresh.guest.used(RX_QUEUE), [(u32::from(head), 0)]);
    // An established connection that gets an unexpected op is reset.
    let _host = rig.connect();
    rig.send(rig.hdr(op::REQUEST), &[]);
    let got = rig.recv(2);
    assert!(got.iter().any(|p| p.0.op == op::RST), "{got:?}");
    assert_eq!(rig.dev.muxer().connection_count(), 0);
}

/// fuzz/corpus/hybrid_lines replayed on stable.
#[test]
fn hybrid_corpus_replays_without_panic() {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/hybrid_lines");
    let mut n = 0;
    for f in std::fs::read_dir(&corpus)
        .expect("corpus directory")
        .flatten()
    {
        super::fuzz::hybrid_one(&std::fs::read(f.path()).expect("corpus file"));
        n += 1;
    }
    assert!(n >= 3, "only {n} inputs in {}", corpus.display());
    // The seeds reach the muxer's handshake: a good line opens a connection, garbage none.
    let seed = |name: &str| std::fs::read(corpus.join(name)).expect("seed");
    assert_eq!(super::fuzz::hybrid_connections(&seed("seed-connect")), 1);
    assert_eq!(super::fuzz::hybrid_connections(&seed("seed-bad-verb")), 0);
}

#[test]
fn the_companion_seeds_reach_companions() {
    // A UDP server's and a listener's companion, each kept when host-server's end closes (the
    // VMM connects again, at once or 20 ms later); the plain connection seed keeps nothing.
    use super::connection::Kept;
    use super::fuzz::companions_after;
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vsock_device");
    let seed = |name: &str| std::fs::read(corpus.join(name)).expect("seed");
    let (kept, _) = companions_after(&seed("seed-udp-server-companion"));
    assert_eq!(kept, [Kept::UdpServer]);
    let (kept, _) = companions_after(&seed("seed-listener-companion"));
    assert_eq!(kept, [Kept::Listener]);
    assert_eq!(
        companions_after(&seed("seed-connect-rw-shutdown")),
        (vec![], false)
    );
}

#[test]
fn fuzz_corpus_and_random_chains_replay_without_panic() {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vsock_device");
    let mut n = 0;
    if let Ok(dir) = std::fs::read_dir(&corpus) {
        for f in dir.flatten() {
            fuzz_one(&std::fs::read(f.path()).expect("corpus file"));
            n += 1;
        }
    }
    assert!(n > 0, "no corpus in {}", corpus.display());
    // And a fixed set of pseudo-random inputs (xorshift), the same every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..150 {
        let len = (x % 400) as usize;
        let mut input = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            input.push(x as u8);
        }
        fuzz_one(&input);
    }
}

/// A muxer with the VM's socket in `dir`, admitting only `peer_uids`.
fn muxer_admitting(dir: &std::path::Path, peer_uids: Vec<u32>) -> super::muxer::Muxer {
    super::muxer::Muxer::new(super::muxer::MuxerConfig {
        vm: "vm0".into(),
        cid: CID,
        host_socket: dir.join("host.sock"),
        listen_socket: Some(dir.join("vm0.vsock")),
        peer_uids,
        take_sockets: false,
    })
    .expect("muxer")
}

/// Runs the muxer until `s` reads EOF (true) or 2 s pass (false: still open).
fn closed_by(m: &mut super::muxer::Muxer, s: &mut UnixStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        m.process_events();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(n) => panic!("the muxer wrote {:?}", &b[..n]),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    false
}

#[test]
fn the_vm_socket_is_0660_and_admits_peers_by_so_peercred() {
    use std::os::unix::fs::PermissionsExt;
    let me = rustix::process::getuid().as_raw();
    let dir = tempfile::tempdir().expect("temp dir");
    // Not admitted: the stream closes without an OK and without its line being read.
    let mut m = muxer_admitting(dir.path(), vec![me.wrapping_add(4242)]);
    let path = dir.path().join("vm0.vsock");
    let mode = std::fs::metadata(&path)
        .expect("socket file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "{mode:o}");
    let mut s = UnixStream::connect(&path).expect("connect");
    s.write_all(b"CONNECT 5000\n").expect("write");
    assert!(
        closed_by(&mut m, &mut s),
        "a refused peer's stream must close"
    );
    assert_eq!(m.refused_peers(), 1);
    assert_eq!(m.connection_count(), 0);
    // Admitted: the muxer keeps the stream and waits for the guest (no EOF).
    let dir = tempfile::tempdir().expect("temp dir");
    let mut m = muxer_admitting(dir.path(), vec![me]);
    let mut s = UnixStream::connect(dir.path().join("vm0.vsock")).expect("connect");
    s.write_all(b"CONNECT 5000\n").expect("write");
    assert!(
        !closed_by(&mut m, &mut s),
        "an admitted peer's stream stays open"
    );
    assert_eq!(m.refused_peers(), 0);
    assert_eq!(m.connection_count(), 1);
}

// ---- a socket passed by host-server (#14): the connection bridged straight to it ----------

/// A guest connection through a muxer that takes sockets, played up to host-server's answer:
/// the test plays host-server on `control` and the IPv6 peer on `peer` (a loopback TCP pair).
struct Passed {
    rig: Rig,
    control: UnixStream,
    peer: std::net::TcpStream,
}

fn request_frame() -> Vec<u8> {
    shared_proto::to_vec(&ToHost::Connect(shared_proto::outsource::ConnectRequest {
        dest: "10.170.160.9:80".parse().expect("addr"),
        pass_fd: false,
        nonblocking: false,
    }))
    .expect("frame")
}

fn connected_frame() -> Vec<u8> {
    shared_proto::to_vec(&shared_proto::ToGuest::Connected {
        local: "0.0.0.0:40123".parse().expect("addr"),
        peer: "10.170.160.9:80".parse().expect("addr"),
        fd_passed: false,
        in_progress: false,
    })
    .expect("frame")
}

/// A connected TCP pair on loopback: (the end to pass, the peer's end).
fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let a = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    b.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    (a, b)
}

/// Sends `frame` on host-server's end with `fd` attached, as host-server's handover does.
fn answer_with(control: &UnixStream, frame: &[u8], fd: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let sent = outsock_fdpass::sendmsg_fd::<outsock_fdpass::Libc>(
        control.as_raw_fd(),
        frame,
        fd.as_raw_fd(),
        libc::MSG_NOSIGNAL,
    )
    .expect("sendmsg");
    assert_eq!(sent, frame.len());
}

/// Whether `s` has nothing to read now (and is not closed).
fn silent(s: &UnixStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let r = (&*s).read(&mut [0u8; 64]);
    s.set_nonblocking(false).expect("blocking");
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Reads `s` until EOF (true) or 3 s (false), running the device meanwhile.
fn closes(rig: &mut Rig, s: &mut UnixStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match s.read(&mut [0u8; 64]) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return true,
        }
        rig.dev.process_backend();
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The payloads of the RW packets the guest gets until `n` bytes came (or 5 s passed).
fn recv_bytes(rig: &mut Rig, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < n && Instant::now() < deadline {
        for (h, d) in rig.recv(1) {
            assert_eq!(h.op, op::RW, "{h:?}");
            got.extend(d);
        }
    }
    got
}

/// The guest's header for a connection from guest port `port` to HOST_PORT.
fn hdr_from(rig: &Rig, port: u32, op: u16) -> Header {
    Header {
        src_port: port,
        ..rig.hdr(op)
    }
}

/// Runs the backend until a packet of `op` for guest port `port` arrives (other packets are
/// returned too) or `limit` passes.
fn recv_until(rig: &mut Rig, port: u32, op: u16, limit: Duration) -> Vec<(Header, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        got.extend(rig.recv(1));
        if got.iter().any(|(h, _)| h.dst_port == port && h.op == op) {
            break;
        }
    }
    got
}

impl Passed {
    /// Connects, sends the request and `pipelined` guest bytes after it, checks that only the
    /// hello and the request reached host-server, then answers with a loopback TCP socket.
    fn open(pipelined: &[u8]) -> Self {
        let mut rig = Rig::without_vm_socket(true);
        let mut control = rig.open_stream();
        // The request in two pieces, the header split, then pipelined bytes.
        let req = request_frame();
        rig.send(rig.hdr(op::RW), &req[..5]);
        let mut rest = req[5..].to_vec();
        rest.extend_from_slice(pipelined);
        rig.send(rig.hdr(op::RW), &rest);
        assert_eq!(
            read_frame(&mut control),
            ToHost::Hello(VmHello {
                vm: "vm0".into(),
                cid: CID as u32,
                port: HOST_PORT,
                takes_sockets: true,
            })
        );
        assert!(matches!(read_frame(&mut control), ToHost::Connect(_)));
        rig.dev.process_backend();
        assert!(
            silent(&control),
            "pipelined guest bytes went to host-server before the answer"
        );
        let (mine, peer) = tcp_pair();
        {
            use std::os::fd::AsFd;
            answer_with(&control, &connected_frame(), mine.as_fd());
        }
        drop(mine);
        // The guest gets the answer as it is (its header and its body are read apart, so
        // that nothing past the answer is read on host.sock).
        assert_eq!(
            recv_bytes(&mut rig, connected_frame().len()),
            connected_frame()
        );
        let conn = rig.conn();
        assert!(conn.is_passed(), "bridged to the passed socket");
        assert_eq!(rig.dev.muxer().passed_sockets(), 1);
        Self { rig, control, peer }
    }
}

#[test]
fn a_passed_socket_carries_pipelined_bytes_and_data_both_ways() {
    let Passed {
        mut rig,
        mut control,
        mut peer,
    } = Passed::open(b"GET / HTTP/1.0\r\n\r\n");
    // The held bytes went to the socket, not to host-server.
    let mut b = [0u8; 18];
    peer.read_exact(&mut b)
        .expect("pipelined bytes at the peer");
    assert_eq!(&b, b"GET / HTTP/1.0\r\n\r\n");
    rig.send(rig.hdr(op::RW), b" and more");
    let mut b = [0u8; 9];
    peer.read_exact(&mut b).expect("guest bytes at the peer");
    assert_eq!(&b, b" and more");
    peer.write_all(b"HTTP/1.0 200 OK\r\n").expect("write");
    let got = rig.recv(1);
    assert_eq!(got[0].0.op, op::RW);
    assert_eq!(got[0].1, b"HTTP/1.0 200 OK\r\n");
    // fwd_cnt counts every guest byte written anywhere (request and data), not the hello.
    assert_eq!(got[0].0.fwd_cnt as usize, request_frame().len() + 18 + 9);
    assert!(
        silent(&control),
        "nothing of the data on the control stream"
    );

    // The peer closes: the guest hears SHUTDOWN; the guest closes too: RST, and the
    // control stream says the connection ended (below).
    peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let got = rig.recv(1);
    assert_eq!((got[0].0.op, got[0].0.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    assert!(
        !closes(&mut rig, &mut control),
        "the control stream stays open while the guest's side is open"
    );
    rig.send(
        Header {
            flags: SHUTDOWN_SEND,
            ..rig.hdr(op::SHUTDOWN)
        },
        &[],
    );
    let got = rig.recv(1);
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!(rig.dev.muxer().connection_count(), 0);
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).expect("the peer reads EOF");
    assert!(rest.is_empty());
    // The control stream says the connection ended (host-server gives back its pin and
    // permit then); unanswered, it is closed once it is older than IDLE_STREAM_FOR.
    control
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(read_frame(&mut control), ToHost::Ended);
    assert!(closes(&mut rig, &mut control), "control stream closed");
}

/// Ends a passed connection from the guest (SHUTDOWN both ways, answered RST) and returns
/// what its control stream says next.
fn end_passed(rig: &mut Rig, port: u32, control: &mut UnixStream) -> ToHost {
    rig.send(
        Header {
            flags: SHUTDOWN_SEND | SHUTDOWN_RCV,
            ..hdr_from(rig, port, op::SHUTDOWN)
        },
        &[],
    );
    let got = recv_until(rig, port, op::RST, Duration::from_secs(5));
    assert!(got
        .iter()
        .any(|(h, _)| h.dst_port == port && h.op == op::RST));
    control
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    read_frame(control)
}

/// The guest's connect from `port` on a kept stream: RESPONSE, then its request reaches
/// `control` (no hello: the stream had one), answered with a fresh socket.
fn connect_on_kept(rig: &mut Rig, port: u32, control: &mut UnixStream) -> std::net::TcpStream {
    rig.send(hdr_from(rig, port, op::REQUEST), &[]);
    let got = recv_until(rig, port, op::RESPONSE, Duration::from_secs(5));
    assert!(
        got.iter()
            .any(|(h, _)| h.dst_port == port && h.op == op::RESPONSE),
        "{got:?}"
    );
    rig.send(hdr_from(rig, port, op::RW), &request_frame());
    assert!(matches!(read_frame(control), ToHost::Connect(_)));
    let (mine, peer) = tcp_pair();
    {
        use std::os::fd::AsFd;
        answer_with(control, &connected_frame(), mine.as_fd());
    }
    assert_eq!(recv_bytes(rig, connected_frame().len()), connected_frame());
    peer
}

/// A passed connection that ends leaves its host.sock stream with the VMM: `Ended` goes out on
/// it, and once host-server has answered `Released` the guest's next connect goes out on it
/// (no new stream, no second hello). Not before that answer, and never on a stream
/// host-server closed: those connects get a new stream.
#[test]
fn an_ended_connections_stream_carries_the_next_connect_once_released() {
    let Passed {
        mut rig,
        mut control,
        peer: _peer,
    } = Passed::open(&[]);
    rig.host.set_nonblocking(true).expect("nonblocking");
    assert_eq!(
        end_passed(&mut rig, GUEST_PORT, &mut control),
        ToHost::Ended
    );
    assert_eq!(rig.dev.muxer().idle_streams(), 1);

    // Not released yet: the next connect opens a stream of its own.
    rig.send(hdr_from(&rig, GUEST_PORT + 1, op::REQUEST), &[]);
    recv_until(
        &mut rig,
        GUEST_PORT + 1,
        op::RESPONSE,
        Duration::from_secs(5),
    );
    let (mut fresh, _) = rig.host.accept().expect("a new stream while not released");
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(matches!(read_frame(&mut fresh), ToHost::Hello(_)));
    assert_eq!(rig.dev.muxer().reused_streams(), 0);

    // Released: the next connect goes out on the kept stream, twice in a row.
    control
        .write_all(&shared_proto::to_vec(&shared_proto::ToGuest::Released).expect("frame"))
        .expect("released");
    for (i, port) in [GUEST_PORT + 2, GUEST_PORT + 3].into_iter().enumerate() {
        let _peer = connect_on_kept(&mut rig, port, &mut control);
        assert!(
            matches!(rig.host.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a new stream for a connect that had a kept one"
        );
        assert_eq!(rig.dev.muxer().reused_streams(), i as u64 + 1);
        assert_eq!(end_passed(&mut rig, port, &mut control), ToHost::Ended);
        control
            .write_all(&shared_proto::to_vec(&shared_proto::ToGuest::Released).expect("frame"))
            .expect("released");
    }

    // host-server closed the kept stream after answering (its request timeout): a new stream.
    drop(control);
    rig.send(hdr_from(&rig, GUEST_PORT + 4, op::REQUEST), &[]);
    recv_until(
        &mut rig,
        GUEST_PORT + 4,
        op::RESPONSE,
        Duration::from_secs(5),
    );
    let (mut fresh, _) = rig
        .host
        .accept()
        .expect("a new stream after host-server closed it");
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(matches!(read_frame(&mut fresh), ToHost::Hello(_)));
    assert_eq!(rig.dev.muxer().reused_streams(), 2);
    assert_eq!(
        rig.dev.muxer().idle_streams(),
        0,
        "the closed one was let go"
    );
}

#[test]
fn a_guest_half_close_reaches_the_passed_socket_and_credit_holds() {
    let Passed {
        mut rig,
        mut control,
        mut peer,
    } = Passed::open(&[]);
    // Guest → peer, far more than TX_BUF_SIZE, in chunks the credit allows: fwd_cnt grows
    // as the socket takes the bytes, and every byte arrives in order.
    let total = 3 * TX_BUF_SIZE as usize;
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        peer.read_to_end(&mut got).expect("read to EOF");
        (got, peer)
    });
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let mut sent = 0usize;
    let mut acked = 0usize;
    while sent < total {
        // Credit: at most TX_BUF_SIZE unacknowledged bytes.
        if sent - acked + 4096 > TX_BUF_SIZE as usize {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                rig.send(rig.hdr(op::CREDIT_REQUEST), &[]);
                let got = rig.recv(1);
                if let Some(h) = got.iter().find(|p| p.0.op == op::CREDIT_UPDATE) {
                    acked = h.0.fwd_cnt as usize - request_frame().len();
                }
                if sent - acked + 4096 <= TX_BUF_SIZE as usize {
                    break;
                }
                assert!(Instant::now() < deadline, "credit never came back");
            }
        }
        rig.send(rig.hdr(op::RW), &data[sent..sent + 4096]);
        sent += 4096;
    }
    rig.send(
        Header {
            flags: SHUTDOWN_SEND,
            ..rig.hdr(op::SHUTDOWN)
        },
        &[],
    );
    // The half-close is applied once the buffer is written: the peer reads EOF.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        rig.dev.process_backend();
        std::thread::sleep(Duration::from_millis(2));
    }
    let (got, mut peer) = reader.join().expect("reader");
    assert_eq!(got.len(), total);
    assert!(got == data, "bytes arrive in order");
    // Peer → guest with a guest that has 100 bytes of buffer (and has consumed the answer):
    // credit stops the reads.
    let answered = connected_frame().len() as u32;
    rig.send(
        Header {
            buf_alloc: 100,
            fwd_cnt: answered,
            ..rig.hdr(op::CREDIT_UPDATE)
        },
        &[],
    );
    peer.write_all(&[7u8; 300]).expect("write");
    let got = rig.recv(2);
    assert_eq!((got[0].0.op, got[0].1.len()), (op::RW, 100));
    assert_eq!(got[1].0.op, op::CREDIT_REQUEST);
    assert!(rig.recv(1).is_empty(), "nothing beyond the guest's credit");
    rig.send(
        Header {
            buf_alloc: 100,
            fwd_cnt: answered + 100,
            ..rig.hdr(op::CREDIT_UPDATE)
        },
        &[],
    );
    let got = rig.recv(1);
    assert_eq!((got[0].0.op, got[0].1.len()), (op::RW, 100));
    // The guest resets: the socket closes; the control stream says `Ended` and, with no
    // `Released` from host-server, is closed after IDLE_STREAM_FOR.
    rig.send(rig.hdr(op::RST), &[]);
    assert_eq!(rig.dev.muxer().connection_count(), 0);
    let mut rest = Vec::new();
    let _ = peer.read_to_end(&mut rest);
    assert!(closes(&mut rig, &mut control), "control stream closed");
}

#[test]
fn without_a_socket_the_held_bytes_are_relayed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = UnixListener::bind(dir.path().join("host.sock")).expect("bind host.sock");
    let guest = FakeGuest::new();
    let dev =
        super::fuzz::activated_device_with(&guest, CID, &dir.path().join("host.sock"), None, true);
    let mut rig = Rig {
        guest,
        dev,
        host,
        dir,
    };
    rig.send(rig.hdr(op::REQUEST), &[]);
    let (mut control, _) = rig.host.accept().expect("accept");
    control
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(rig.recv(1)[0].0.op, op::RESPONSE);
    let mut req = request_frame();
    req.extend_from_slice(b"pipelined");
    rig.send(rig.hdr(op::RW), &req);
    assert!(matches!(read_frame(&mut control), ToHost::Hello(_)));
    assert!(matches!(read_frame(&mut control), ToHost::Connect(_)));
    rig.dev.process_backend();
    assert!(silent(&control), "held until the answer");
    // An answer without a socket (an older host-server, or one that relays): relayed.
    control.write_all(&connected_frame()).expect("answer");
    control.write_all(b"from the relay").expect("relayed data");
    let mut want = connected_frame();
    want.extend_from_slice(b"from the relay");
    assert_eq!(recv_bytes(&mut rig, want.len()), want);
    let mut b = [0u8; 9];
    control.read_exact(&mut b).expect("the held bytes follow");
    assert_eq!(&b, b"pipelined");
    assert!(!rig.conn().is_passed());
}

/// What host-server might attach that the VMM must refuse: the connection is reset (RST),
/// the descriptor closed, and the control stream closes; the VMM carries on.
#[test]
fn a_bogus_descriptor_is_refused_with_rst() {
    use super::connection::Refused;
    use std::os::fd::AsFd;
    let dir = tempfile::tempdir().expect("temp dir");
    let host = UnixListener::bind(dir.path().join("host.sock")).expect("bind host.sock");
    let guest = FakeGuest::new();
    let dev =
        super::fuzz::activated_device_with(&guest, CID, &dir.path().join("host.sock"), None, true);
    let mut rig = Rig {
        guest,
        dev,
        host,
        dir,
    };
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let (pipe_r, _pipe_w) = std::io::pipe().expect("pipe");
    let (mine, _peer) = tcp_pair();
    let cases: [(&str, std::os::fd::BorrowedFd<'_>, Refused); 3] = [
        ("a datagram socket", udp.as_fd(), Refused::NotAStreamSocket),
        ("a pipe", pipe_r.as_fd(), Refused::NotAStreamSocket),
        (
            "a socket on the answer's body",
            mine.as_fd(),
            Refused::Unexpected,
        ),
    ];
    for (i, (what, fd, why)) in cases.into_iter().enumerate() {
        rig.send(rig.hdr(op::REQUEST), &[]);
        let (mut control, _) = rig.host.accept().expect("accept");
        control
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(rig.recv(1)[0].0.op, op::RESPONSE, "{what}");
        rig.send(rig.hdr(op::RW), &request_frame());
        assert!(matches!(read_frame(&mut control), ToHost::Hello(_)));
        assert!(matches!(read_frame(&mut control), ToHost::Connect(_)));
        let answer = connected_frame();
        if why == Refused::Unexpected {
            // The header alone first, then the body with the descriptor.
            control.write_all(&answer[..8]).expect("header");
            assert_eq!(rig.recv(1)[0].1, &answer[..8], "{what}");
            answer_with(&control, &answer[8..], fd);
        } else {
            answer_with(&control, &answer, fd);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut ops = Vec::new();
        while !ops.contains(&op::RST) && Instant::now() < deadline {
            ops.extend(rig.recv(1).iter().map(|p| p.0.op));
        }
        assert_eq!(ops.last(), Some(&op::RST), "{what}: {ops:?}");
        assert!(
            !ops.contains(&op::RW),
            "{what}: no answer bytes delivered with a refused descriptor"
        );
        assert_eq!(rig.dev.muxer().connection_count(), 0, "{what}");
        assert!(closes(&mut rig, &mut control), "{what}: control closed");
        assert_eq!(rig.dev.muxer().refused_sockets(), i as u64 + 1, "{what}");
        assert_eq!(rig.dev.muxer().passed_sockets(), 0, "{what}");
    }
}

/// A guest connection to host-server's port on its own, over a Unix stream pair, past its
/// REQUEST and RESPONSE, with `size` bytes of guest memory: the memory, the connection, the
/// host's end of the stream, and the header of the guest's RW packets.
fn established_guest_connection(
    size: usize,
) -> (
    vm_memory::GuestMemoryMmap<()>,
    super::connection::Connection,
    UnixStream,
    Header,
) {
    use super::connection::Connection;
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).expect("memory");
    let (vmm_end, host) = UnixStream::pair().expect("pair");
    vmm_end.set_nonblocking(true).expect("nonblocking");
    host.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut c = Connection::peer_init(vmm_end, CID, HOST_PORT, GUEST_PORT, Vec::new(), false);
    let hdr = Header {
        src_cid: CID,
        dst_cid: 2,
        src_port: GUEST_PORT,
        dst_port: HOST_PORT,
        type_: TYPE_STREAM,
        op: op::REQUEST,
        buf_alloc: 1 << 20,
        ..Header::default()
    };
    let mut scratch = [0u8; 64];
    c.send_pkt(&hdr, &[]);
    assert_eq!(
        c.recv_pkt(&mut scratch[..]).expect("response").op,
        op::RESPONSE
    );
    (mem, c, host, Header { op: op::RW, ..hdr })
}

/// The one-copy data path on its own: guest bytes written to the stream straight from guest
/// memory while nothing is buffered (the rest buffered when the stream is full, and later
/// packets then queue behind it), and the stream's bytes read straight into guest memory.
#[test]
fn payloads_move_between_guest_memory_and_the_stream_directly() {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
    let (mem, mut c, mut host, rw) = established_guest_connection(1 << 20);
    // Guest → stream.
    mem.write_slice(b"from guest memory", GuestAddress(0x1000))
        .expect("write");
    let data = mem.get_slice(GuestAddress(0x1000), 17).expect("slice");
    assert!(
        c.send_direct(&rw, &[data]),
        "an RW packet with nothing buffered goes directly"
    );
    assert_eq!(c.tx_buffered(), 0);
    let mut b = [0u8; 17];
    host.read_exact(&mut b).expect("read");
    assert_eq!(&b, b"from guest memory");
    // Fill the socket: what does not fit is buffered, and the next packet is not direct.
    let big = mem
        .get_slice(GuestAddress(0x10000), 128 * 1024)
        .expect("slice");
    let mut direct = 0;
    while c.tx_buffered() == 0 {
        assert!(c.send_direct(&rw, &[big]));
        direct += 1;
        assert!(direct < 64, "the socket never filled");
    }
    assert!(
        !c.send_direct(&rw, &[data]),
        "behind buffered bytes: the copy path"
    );
    // Stream → guest memory.
    let mut drained = vec![0u8; direct * 128 * 1024 - c.tx_buffered()];
    host.read_exact(&mut drained).expect("drain");
    host.write_all(b"to guest memory").expect("write");
    let mut rx = mem.get_slice(GuestAddress(0x8000), 4096).expect("slice");
    c.notify(vmm_sys_util::epoll::EventSet::IN);
    let h = loop {
        let h = c.recv_pkt(&mut rx).expect("a packet");
        if h.op == op::RW {
            break h;
        }
    };
    assert_eq!(h.len, 15);
    let mut got = [0u8; 15];
    mem.read_slice(&mut got, GuestAddress(0x8000))
        .expect("read");
    assert_eq!(&got, b"to guest memory");
}

/// A run of a connection's TX packets goes with one write, in ring order; when the stream
/// takes part of it, the rest is buffered from where the write stopped (inside any packet),
/// so the stream still gets every byte in order; a run too large for the window is refused
/// whole (the caller then sends the packets one by one).
#[test]
fn a_run_of_packets_goes_in_one_write_and_its_rest_in_order() {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
    let (mem, mut c, mut host, rw) = established_guest_connection(4 << 20);
    let slice = |at: u64, len: usize| mem.get_slice(GuestAddress(at), len).expect("slice");
    mem.write_slice(b"one two three", GuestAddress(0x1000))
        .expect("write");
    let words = [slice(0x1008, 5), slice(0x1004, 4)];
    // The connection's first bytes are looked at packet by packet (a frame kept for
    // re-registration may start there): no run yet.
    assert!(!c.send_direct(&rw, &words));
    assert!(c.send_direct(&rw, &[slice(0x1000, 4)]));
    assert!(c.send_direct(&rw, &words));
    let mut b = [0u8; 13];
    host.read_exact(&mut b).expect("read");
    assert_eq!(&b, b"one threetwo ");

    // Runs of three different 60,000-byte payloads until the stream is full: a write stops
    // inside one of them, and what it did not take waits in the buffer.
    let pattern: Vec<u8> = (0..180_000u32).map(|i| (i % 251) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(0x10_0000))
        .expect("write");
    let run = [
        slice(0x10_0000, 60_000),
        slice(0x10_0000 + 60_000, 60_000),
        slice(0x10_0000 + 120_000, 60_000),
    ];
    let mut runs = 0;
    while c.tx_buffered() == 0 {
        assert!(c.send_direct(&rw, &run));
        runs += 1;
        assert!(runs < 64, "the stream never filled");
    }
    assert!(
        !c.send_direct(&rw, &run),
        "behind buffered bytes: the copy path"
    );
    // Everything comes out in order: what went at once, then the buffer as the stream drains.
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while got.len() < runs * pattern.len() {
        c.notify(vmm_sys_util::epoll::EventSet::OUT);
        let n = host.read(&mut chunk).expect("read");
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got.len(), runs * pattern.len());
    assert!(got.chunks(pattern.len()).all(|r| r == pattern.as_slice()));
    assert_eq!(c.tx_buffered(), 0);

    // More than the window in one run: refused whole, nothing written.
    let wide = vec![slice(0x10_0000, 60_000); 20];
    assert!(!c.send_direct(&rw, &wide));
    host.set_nonblocking(true).expect("nonblocking");
    assert!(host.read(&mut chunk).is_err(), "nothing was written");
}

/// Inbound (#14): host-server's stream on the VM's socket brings the accepted socket with the
/// `Inbound` frame; the guest gets the frame, then the connection runs over the socket, and
/// the stream closes when the connection ends. A host client that sends no frame is bridged
/// as before.
#[test]
fn an_inbound_connection_takes_the_accepted_socket() {
    use std::os::fd::AsFd;
    let dir = tempfile::tempdir().expect("temp dir");
    let host = UnixListener::bind(dir.path().join("host.sock")).expect("bind host.sock");
    let guest = FakeGuest::new();
    let vm_sock = dir.path().join("vm0.vsock");
    let dev = super::fuzz::activated_device_with(
        &guest,
        CID,
        &dir.path().join("host.sock"),
        Some(&vm_sock),
        true,
    );
    let mut rig = Rig {
        guest,
        dev,
        host,
        dir,
    };
    let accept = |rig: &mut Rig, h: &mut UnixStream| -> Header {
        h.write_all(b"CONNECT 5000\n").expect("write");
        let req = rig.recv(1);
        assert_eq!(req[0].0.op, op::REQUEST);
        let resp = Header {
            src_cid: CID,
            dst_cid: 2,
            src_port: 5000,
            dst_port: req[0].0.src_port,
            type_: TYPE_STREAM,
            op: op::RESPONSE,
            buf_alloc: 64 * 1024,
            ..Header::default()
        };
        rig.send(resp, &[]);
        let local = req[0].0.src_port;
        let mut line = vec![0u8; format!("OK {local}\n").len()];
        h.read_exact(&mut line).expect("OK line");
        assert_eq!(line, format!("OK {local}\n").as_bytes());
        resp
    };
    let mut control = UnixStream::connect(&vm_sock).expect("connect");
    control
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let resp = accept(&mut rig, &mut control);
    let inbound = shared_proto::to_vec(&shared_proto::ToGuest::Inbound {
        peer: "172.21.112.1:40000".parse().expect("addr"),
        local: "0.0.0.0:8080".parse().expect("addr"),
    })
    .expect("frame");
    let (mine, mut peer) = tcp_pair();
    answer_with(&control, &inbound, mine.as_fd());
    drop(mine);
    assert_eq!(recv_bytes(&mut rig, inbound.len()), inbound);
    assert_eq!(rig.dev.muxer().passed_sockets(), 1);
    peer.write_all(b"from the world").expect("write");
    assert_eq!(recv_bytes(&mut rig, 14), b"from the world");
    rig.send(Header { op: op::RW, ..resp }, b"from the guest");
    let mut b = [0u8; 14];
    peer.read_exact(&mut b).expect("read");
    assert_eq!(&b, b"from the guest");
    assert!(silent(&control), "nothing on the control stream");
    rig.send(
        Header {
            op: op::RST,
            ..resp
        },
        &[],
    );
    assert_eq!(rig.dev.muxer().connection_count(), 0);
    let mut rest = Vec::new();
    let _ = peer.read_to_end(&mut rest);
    assert!(closes(&mut rig, &mut control), "control stream closed");

    // A raw client (no frame): its bytes reach the guest as they are, a few at a time at
    // first, and nothing is held.
    let mut raw = UnixStream::connect(&vm_sock).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let resp = accept(&mut rig, &mut raw);
    rig.send(Header { op: op::RW, ..resp }, b"banner");
    let mut b = [0u8; 6];
    raw.read_exact(&mut b).expect("the guest speaks first");
    assert_eq!(&b, b"banner");
    raw.write_all(b"hi").expect("write");
    assert_eq!(recv_bytes(&mut rig, 2), b"hi");
    raw.write_all(b"not a frame at all").expect("write");
    assert_eq!(recv_bytes(&mut rig, 18), b"not a frame at all");
    assert_eq!(rig.dev.muxer().passed_sockets(), 1);
}

#[test]
fn a_host_server_that_does_not_accept_never_blocks_the_device() {
    let mut rig = Rig::new();
    // host-server stalled: its listen backlog holds one waiting connection (listen(0)), and
    // nothing accepts after the first connection.
    rustix::net::listen(&rig.host, 0).expect("listen(0)");
    let mut a = rig.connect();
    // B fills the backlog: the kernel completes its connect without an accept.
    rig.send(hdr_from(&rig, GUEST_PORT + 1, op::REQUEST), &[]);
    let got = recv_until(
        &mut rig,
        GUEST_PORT + 1,
        op::RESPONSE,
        Duration::from_secs(5),
    );
    assert!(
        got.iter()
            .any(|(h, _)| h.dst_port == GUEST_PORT + 1 && h.op == op::RESPONSE),
        "{got:?}"
    );
    // C finds the backlog full: a blocking connect would wait here forever.
    let started = Instant::now();
    rig.send(hdr_from(&rig, GUEST_PORT + 2, op::REQUEST), &[]);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the guest's connect took {:?}",
        started.elapsed()
    );
    assert_eq!(rig.dev.muxer().connecting_count(), 1);
    // The established connection keeps working both ways meanwhile.
    rig.send(rig.hdr(op::RW), b"still here");
    let mut b = [0u8; 10];
    a.read_exact(&mut b)
        .expect("guest bytes while host.sock is full");
    assert_eq!(&b, b"still here");
    a.write_all(b"and back").expect("write");
    let got = rig.recv(1);
    assert_eq!((got[0].0.op, got[0].0.dst_port), (op::RW, GUEST_PORT));
    assert_eq!(got[0].1, b"and back");
    // Nobody makes room: C gets RST once its connect deadline passed, not before.
    let got = recv_until(&mut rig, GUEST_PORT + 2, op::RST, Duration::from_secs(5));
    let waited = started.elapsed();
    assert!(
        got.iter()
            .any(|(h, _)| h.dst_port == GUEST_PORT + 2 && h.op == op::RST),
        "{got:?}"
    );
    assert!(
        waited >= super::muxer::CONNECT_TIMEOUT - Duration::from_millis(100),
        "RST after {waited:?}"
    );
    assert_eq!(rig.dev.muxer().connecting_count(), 0);
    // D waits too; then host-server accepts B (room again): D connects by itself, RESPONSE,
    // and its hello is the first thing host-server reads.
    rig.send(hdr_from(&rig, GUEST_PORT + 3, op::REQUEST), &[]);
    assert_eq!(rig.dev.muxer().connecting_count(), 1);
    let (mut b_host, _) = rig.host.accept().expect("B");
    b_host
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(matches!(read_frame(&mut b_host), ToHost::Hello(_)));
    let got = recv_until(
        &mut rig,
        GUEST_PORT + 3,
        op::RESPONSE,
        Duration::from_secs(5),
    );
    assert!(
        got.iter()
            .any(|(h, _)| h.dst_port == GUEST_PORT + 3 && h.op == op::RESPONSE),
        "{got:?}"
    );
    assert_eq!(rig.dev.muxer().connecting_count(), 0);
    let (mut d_host, _) = rig.host.accept().expect("D");
    d_host
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // D's stream became writable while the retry was dispatched: the backend's next round
    // (the event loop's next wake-up) writes its hello.
    rig.dev.process_backend();
    assert!(matches!(read_frame(&mut d_host), ToHost::Hello(_)));
    rig.send(hdr_from(&rig, GUEST_PORT + 3, op::RW), b"d");
    let mut one = [0u8; 1];
    d_host.read_exact(&mut one).expect("D's byte");
    assert_eq!(&one, b"d");
}

#[test]
fn a_guest_rst_cancels_a_pending_connect() {
    let mut rig = Rig::new();
    rustix::net::listen(&rig.host, 0).expect("listen(0)");
    let _a = rig.connect();
    // B fills the backlog (never accepted), C waits.
    rig.send(hdr_from(&rig, GUEST_PORT + 1, op::REQUEST), &[]);
    assert_eq!(rig.dev.muxer().connecting_count(), 0);
    let _ = recv_until(
        &mut rig,
        GUEST_PORT + 1,
        op::RESPONSE,
        Duration::from_secs(5),
    );
    rig.send(hdr_from(&rig, GUEST_PORT + 2, op::REQUEST), &[]);
    assert_eq!(rig.dev.muxer().connecting_count(), 1);
    rig.send(hdr_from(&rig, GUEST_PORT + 2, op::RST), &[]);
    assert_eq!(rig.dev.muxer().connecting_count(), 0);
    assert!(rig.recv(1).is_empty(), "no answer to an RST");
}

/// One read fills several RX chains: 10,000 bytes from the stream reach the guest as RW
/// packets cut at its 4 KiB buffers' bounds (4096, 4096, 1808), in order, each with the
/// connection's header; the chains the read did not fill go back to the ring and carry the
/// next bytes.
#[test]
fn one_read_fills_several_rx_chains_cut_at_their_bounds() {
    let mut r = Rig::new();
    let mut s = r.connect();
    r.guest.post_rx(8, 4096);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&data).expect("write");
    let wait = |r: &mut Rig, bytes: usize| {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got
            .iter()
            .map(|(_, d): &(Header, Vec<u8>)| d.len())
            .sum::<usize>()
            < bytes
        {
            assert!(Instant::now() < deadline, "only {got:?}");
            r.dev.process_backend();
            got.extend(r.guest.recv().into_iter().filter(|(h, _)| h.op == op::RW));
            std::thread::sleep(Duration::from_millis(2));
        }
        got
    };
    let got = wait(&mut r, data.len());
    let lens: Vec<u32> = got.iter().map(|(h, _)| h.len).collect();
    assert_eq!(lens, [4096, 4096, 1808]);
    for (h, d) in &got {
        assert_eq!(h.len as usize, d.len());
        assert_eq!(
            (h.src_port, h.dst_port, h.dst_cid, h.buf_alloc),
            (HOST_PORT, GUEST_PORT, CID, TX_BUF_SIZE)
        );
    }
    let all: Vec<u8> = got.into_iter().flat_map(|(_, d)| d).collect();
    assert_eq!(all, data);
    assert_eq!(
        r.guest.rx_outstanding(),
        5,
        "the other chains are still posted"
    );
    s.write_all(b"next").expect("write");
    let next = wait(&mut r, 4);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].1, b"next");
    assert_eq!(r.guest.rx_outstanding(), 4);
}

// ---- a guest listener's companion outlives host-server (#15) ------------------------------

fn listen_frame() -> Vec<u8> {
    shared_proto::to_vec(&ToHost::Listen(shared_proto::outsource::ListenRequest {
        addr: "0.0.0.0:8080".parse().expect("addr"),
        backlog: 128,
        pass_fd: false,
        vsock_port: 51_000,
        channel: false,
    }))
    .expect("frame")
}

fn listening_frame() -> Vec<u8> {
    shared_proto::to_vec(&shared_proto::ToGuest::Listening {
        local: "0.0.0.0:8080".parse().expect("addr"),
    })
    .expect("frame")
}

/// One whole frame's bytes as they came.
fn read_raw_frame(s: &mut UnixStream) -> Vec<u8> {
    let mut all = vec![0u8; shared_proto::frame::HEADER_LEN];
    s.read_exact(&mut all).expect("frame header");
    let total = shared_proto::frame::frame_len(&all)
        .expect("valid header")
        .expect("complete header");
    all.resize(total, 0);
    s.read_exact(&mut all[shared_proto::frame::HEADER_LEN..])
        .expect("frame body");
    all
}

/// A guest listener's companion, played up to host-server's `Listening`: the rig, host-server's
/// end of the stream, and the request's bytes as host-server read them.
fn companion(take_sockets: bool) -> (Rig, UnixStream, Vec<u8>) {
    let (rig, control, req) = companion_of(take_sockets, &listen_frame(), &listening_frame());
    let conn = rig.conn();
    assert!(conn.is_companion());
    (rig, control, req)
}

/// A companion played up to host-server's answer (`answer` to the guest's `req`).
fn companion_of(take_sockets: bool, req: &[u8], answer: &[u8]) -> (Rig, UnixStream, Vec<u8>) {
    let mut rig = Rig::without_vm_socket(take_sockets);
    let mut control = rig.open_stream();
    // The request in two pieces, as a guest kernel may split it.
    rig.send(rig.hdr(op::RW), &req[..5]);
    rig.send(rig.hdr(op::RW), &req[5..]);
    assert!(matches!(read_frame(&mut control), ToHost::Hello(_)));
    let got = read_raw_frame(&mut control);
    assert_eq!(got, req);
    control.write_all(answer).expect("answer");
    assert_eq!(recv_bytes(&mut rig, answer.len()), answer);
    (rig, control, got)
}

/// Runs the backend for `d` with RX buffers posted, each call timed; returns what the guest
/// got. A call that takes long means something blocked the event loop.
fn quiet_for(rig: &mut Rig, d: Duration) -> Vec<(Header, Vec<u8>)> {
    let mut got = Vec::new();
    let end = Instant::now() + d;
    while Instant::now() < end {
        if rig.guest.rx_outstanding() < 8 {
            rig.guest.post_rx(1, 4096);
        }
        let t = Instant::now();
        rig.dev.process_backend();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "the device blocked for {:?}",
            t.elapsed()
        );
        got.extend(rig.guest.recv());
        std::thread::sleep(Duration::from_millis(2));
    }
    got
}

/// host-server dies: its end of the stream closes and its socket goes away.
fn host_server_dies(rig: &mut Rig, control: UnixStream) {
    drop(control);
    let path = rig.dir.path().join("host.sock");
    std::fs::remove_file(&path).expect("remove host.sock");
    let gone = rig.dir.path().join("gone.sock");
    let _ = std::fs::remove_file(&gone);
    rig.host = UnixListener::bind(gone).expect("placeholder");
}

/// host-server comes back at the same path: waits (running the device) for the VMM's
/// connection, returns it with the hello and the frame that followed it.
fn host_server_returns(rig: &mut Rig) -> (UnixStream, ToHost, Vec<u8>) {
    let path = rig.dir.path().join("host.sock");
    rig.host = UnixListener::bind(&path).expect("bind host.sock again");
    rig.host.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match rig.host.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        assert!(Instant::now() < deadline, "the VMM did not connect again");
        let t = Instant::now();
        rig.dev.process_backend();
        assert!(t.elapsed() < Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(2));
    };
    s.set_nonblocking(false).expect("blocking");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The VMM writes as the stream becomes writable: run the device while reading.
    rig.dev.process_backend();
    let hello = read_frame(&mut s);
    let request = read_raw_frame(&mut s);
    (s, hello, request)
}

fn no_rst_nor_bytes(got: &[(Header, Vec<u8>)]) {
    assert!(
        got.iter().all(|(h, _)| h.op == op::CREDIT_UPDATE),
        "the guest heard {got:?}"
    );
}

#[test]
fn a_companion_is_registered_again_when_host_server_comes_back() {
    for take_sockets in [false, true] {
        let (mut rig, control, request) = companion(take_sockets);
        host_server_dies(&mut rig, control);
        let got = quiet_for(&mut rig, Duration::from_millis(300));
        no_rst_nor_bytes(&got);
        assert_eq!(rig.dev.muxer().redial_count(), 1);
        let conn = rig
            .dev
            .muxer()
            .connection(HOST_PORT, GUEST_PORT)
            .expect("the companion is kept");
        assert!(conn.registering_again());
        // Guest bytes meanwhile are dropped, never sent to the new host-server.
        rig.send(rig.hdr(op::RW), b"stray");
        let (mut again, hello, req_again) = host_server_returns(&mut rig);
        assert_eq!(
            hello,
            ToHost::Hello(VmHello {
                vm: "vm0".into(),
                cid: CID as u32,
                port: HOST_PORT,
                takes_sockets: take_sockets,
            })
        );
        assert_eq!(req_again, request, "the same Listen frame, byte for byte");
        again.write_all(&listening_frame()).expect("answer");
        let got = quiet_for(&mut rig, Duration::from_millis(200));
        no_rst_nor_bytes(&got);
        assert!(silent(&again), "nothing after the request");
        assert_eq!(rig.dev.muxer().reregistrations(), (1, 0));
        assert_eq!(rig.dev.muxer().redial_count(), 0);
        let conn = rig.conn();
        assert!(conn.is_companion() && !conn.registering_again());
        // It dies again with an unread byte in its queue (ECONNRESET on our read): the
        // same again.
        rig.send(rig.hdr(op::RW), b"x");
        std::thread::sleep(Duration::from_millis(20));
        host_server_dies(&mut rig, again);
        let got = quiet_for(&mut rig, Duration::from_millis(100));
        no_rst_nor_bytes(&got);
        let (mut third, _, req3) = host_server_returns(&mut rig);
        assert_eq!(req3, request);
        third.write_all(&listening_frame()).expect("answer");
        no_rst_nor_bytes(&quiet_for(&mut rig, Duration::from_millis(100)));
        assert_eq!(rig.dev.muxer().reregistrations(), (2, 0));
        // The guest closes its listener: host-server's end reads EOF, as before.
        rig.send(rig.hdr(op::RST), &[]);
        assert!(closes(&mut rig, &mut third));
        assert_eq!(rig.dev.muxer().connection_count(), 0);
    }
}

#[test]
fn a_refused_reregistration_resets_the_companion() {
    let (mut rig, control, _) = companion(true);
    host_server_dies(&mut rig, control);
    let (mut again, _, _) = host_server_returns(&mut rig);
    let failed = shared_proto::to_vec(&shared_proto::ToGuest::Failed(
        shared_proto::Errno::EADDRINUSE,
    ))
    .expect("frame");
    again.write_all(&failed).expect("answer");
    let got = recv_until(&mut rig, GUEST_PORT, op::RST, Duration::from_secs(5));
    assert_eq!(
        got.iter().map(|(h, _)| h.op).collect::<Vec<_>>(),
        vec![op::RST],
        "only an RST: {got:?}"
    );
    assert_eq!(rig.dev.muxer().reregistrations(), (0, 1));
    assert_eq!(rig.dev.muxer().connection_count(), 0);
    assert_eq!(rig.dev.muxer().redial_count(), 0);
    assert!(closes(&mut rig, &mut again));
}

/// host-server comes back (its socket bound again): for 1.5 s the guest hears nothing and
/// nothing connects to it.
fn nobody_connects_when_host_server_is_back(rig: &mut Rig) {
    let path = rig.dir.path().join("host.sock");
    rig.host = UnixListener::bind(&path).expect("bind host.sock again");
    rig.host.set_nonblocking(true).expect("nonblocking");
    assert!(quiet_for(rig, Duration::from_millis(1500)).is_empty());
    assert!(
        rig.host.accept().is_err(),
        "a cancelled companion connected"
    );
}

#[test]
fn a_guest_close_cancels_a_pending_reregistration() {
    // By RST: nothing more is said to the guest, and nobody connects.
    let (mut rig, control, _) = companion(false);
    host_server_dies(&mut rig, control);
    no_rst_nor_bytes(&quiet_for(&mut rig, Duration::from_millis(50)));
    assert_eq!(rig.dev.muxer().redial_count(), 1);
    rig.send(rig.hdr(op::RST), &[]);
    assert_eq!(rig.dev.muxer().redial_count(), 0);
    assert_eq!(rig.dev.muxer().connection_count(), 0);
    nobody_connects_when_host_server_is_back(&mut rig);
    // By SHUTDOWN: the guest gets its RST (the end of a close), nobody connects.
    let (mut rig, control, _) = companion(true);
    host_server_dies(&mut rig, control);
    no_rst_nor_bytes(&quiet_for(&mut rig, Duration::from_millis(50)));
    let mut shut = rig.hdr(op::SHUTDOWN);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    rig.send(shut, &[]);
    let got = recv_until(&mut rig, GUEST_PORT, op::RST, Duration::from_secs(2));
    assert!(got.iter().any(|(h, _)| h.op == op::RST), "{got:?}");
    assert_eq!(rig.dev.muxer().redial_count(), 0);
    assert_eq!(rig.dev.muxer().connection_count(), 0);
    nobody_connects_when_host_server_is_back(&mut rig);
}

#[test]
fn while_host_server_is_away_the_backend_wakes_up_with_backoff_not_a_spin() {
    for (req, answer) in [
        (listen_frame(), listening_frame()),
        (udp_frame(UDP_PORT), associated_frame(UDP_PORT)),
    ] {
        backs_off(&req, &answer);
    }
}

fn backs_off(req: &[u8], answer: &[u8]) {
    let (mut rig, control, _) = companion_of(true, req, answer);
    host_server_dies(&mut rig, control);
    // Counts the backend epoll's wake-ups for 2.5 s with no host.sock at all: tries at 20, 40,
    // 80, ... ms, then one a second, not a wake-up per millisecond.
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    let epoll_fd = rig.dev.muxer().epoll_fd();
    let outer = Epoll::new().expect("epoll");
    outer
        .ctl(
            ControlOperation::Add,
            epoll_fd,
            EpollEvent::new(EventSet::IN, 0),
        )
        .expect("watch the backend");
    let mut wakeups = 0;
    let end = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < end {
        let mut ev = [EpollEvent::default(); 1];
        let n = outer.wait(100, &mut ev).unwrap_or(0);
        if n > 0 {
            wakeups += 1;
            rig.dev.process_backend();
        }
        rig.guest.recv();
    }
    assert!(
        (4..=12).contains(&wakeups),
        "{wakeups} wake-ups in 2.5 s while host-server was away"
    );
    assert_eq!(rig.dev.muxer().redial_count(), 1);
    // Still registered again as soon as it is back (within the 1 s back-off's reach).
    let t = Instant::now();
    let (_again, _, req_again) = host_server_returns(&mut rig);
    assert_eq!(req_again, req);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

// ---- a guest UDP server's companion outlives host-server (#15) ----------------------------

const UDP_PORT: u16 = 5353;

fn udp_frame(port: u16) -> Vec<u8> {
    shared_proto::to_vec(&ToHost::Udp(shared_proto::outsource::UdpRequest {
        bind: std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port),
        channel: false,
    }))
    .expect("frame")
}

fn associated_frame(port: u16) -> Vec<u8> {
    shared_proto::to_vec(&shared_proto::ToGuest::Associated {
        local: std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 2, 15), port),
    })
    .expect("frame")
}

fn datagram(payload: &[u8]) -> shared_proto::outsource::Datagram {
    shared_proto::outsource::Datagram {
        addr: "192.0.2.7:4000".parse().expect("addr"),
        payload: payload.to_vec(),
    }
}

/// A datagram frame the guest sends.
fn to_host(payload: &[u8]) -> Vec<u8> {
    shared_proto::to_vec(&ToHost::Datagram(datagram(payload))).expect("frame")
}

/// A datagram frame host-server sends.
fn to_guest(payload: &[u8]) -> Vec<u8> {
    shared_proto::to_vec(&shared_proto::ToGuest::Datagram(datagram(payload))).expect("frame")
}

fn udp_companion(take_sockets: bool) -> (Rig, UnixStream, Vec<u8>) {
    let (rig, control, req) = companion_of(
        take_sockets,
        &udp_frame(UDP_PORT),
        &associated_frame(UDP_PORT),
    );
    let conn = rig.conn();
    assert_eq!(conn.kept(), Some(super::connection::Kept::UdpServer));
    (rig, control, req)
}

/// Datagrams go both ways on a live UDP companion: the guest's reach host-server's end whole,
/// host-server's reach the guest whole.
fn datagrams_flow(rig: &mut Rig, host: &mut UnixStream, tag: &[u8]) {
    let out = to_host(tag);
    rig.send(rig.hdr(op::RW), &out);
    assert_eq!(read_raw_frame(host), out);
    let back = to_guest(&[tag, b" back"].concat());
    host.write_all(&back).expect("reply");
    assert_eq!(recv_bytes(rig, back.len()), back);
}

#[test]
fn a_udp_server_companion_is_registered_again_after_eof_and_after_econnreset() {
    for take_sockets in [false, true] {
        let (mut rig, mut control, request) = udp_companion(take_sockets);
        datagrams_flow(&mut rig, &mut control, b"before");
        // EOF: host-server's end closes with nothing unread.
        host_server_dies(&mut rig, control);
        no_rst_nor_bytes(&quiet_for(&mut rig, Duration::from_millis(200)));
        assert_eq!(rig.dev.muxer().redial_count(), 1);
        let (mut again, hello, req_again) = host_server_returns(&mut rig);
        assert!(matches!(hello, ToHost::Hello(_)));
        assert_eq!(req_again, request, "the same Udp frame, byte for byte");
        again
            .write_all(&associated_frame(UDP_PORT))
            .expect("answer");
        no_rst_nor_bytes(&quiet_for(&mut rig, Duration::from_millis(100)));
        assert_eq!(rig.dev.muxer().reregistrations(), (1, 0));
        datagrams_flow(&mut rig, &mut again, b"after eof");
        // ECONNRESET: host-server dies with a datagram of the guest's unread.
        rig.send(rig.hdr(op::RW), &to_host(b"unread"));
        std::thread::sleep(Duration::from_millis(20));
        host_server_dies(&mut rig, again);
        no_rst_nor_bytes(&quiet_for(&mut rig, Duration::from_millis(100)));
        let (mut third, _, req3) = host_server_returns(&mut rig);
        assert_eq!(req3, request);
        third
            .write_all(&associated_frame(UDP_PORT))
            .expect("answer");
        no_rst_nor_bytes(&quiet_for(&mut rig, Duration::from_millis(100)));
        assert_eq!(rig.dev.muxer().reregistrations(), (2, 0));
        datagrams_flow(&mut rig, &mut third, b"after reset");
        let conn = rig.conn();
        assert!(conn.is_companion() && !conn.registering_again());
        // The guest closes its socket: host-server's end reads EOF.
        rig.send(rig.hdr(op::RST), &[]);
        assert!(closes(&mut rig, &mut third));
        assert_eq!(rig.dev.muxer().connection_count(), 0);
    }
}

#[test]
fn a_guest_frame_cut_by_host_server_dying_is_dropped_whole() {
    let (mut rig, mut control, _) = udp_companion(false);
    // The guest is 10 bytes into a datagram when host-server dies.
    let cut = to_host(b"cut in the middle by a crash");
    rig.send(rig.hdr(op::RW), &cut[..10]);
    assert_eq!(read_exact(&mut control, 10), cut[..10]);
    host_server_dies(&mut rig, control);
    // Meanwhile it sends the rest of it, a whole datagram, and the start of another: all
    // dropped.
    rig.send(rig.hdr(op::RW), &cut[10..20]);
    rig.send(rig.hdr(op::RW), &cut[20..]);
    let started = to_host(b"started while away");
    rig.send(
        rig.hdr(op::RW),
        &[&to_host(b"while away")[..], &started[..7]].concat(),
    );
    let (mut again, _, _) = host_server_returns(&mut rig);
    again
        .write_all(&associated_frame(UDP_PORT))
        .expect("answer");
    no_rst_nor_bytes(&quiet_for(&mut rig, Duration::from_millis(100)));
    // Then the rest of the one it had started, and a new one, in one packet: the new one is
    // the first thing host-server reads.
    let next = to_host(b"the next datagram");
    rig.send(rig.hdr(op::RW), &[&started[7..], &next[..]].concat());
    assert_eq!(read_raw_frame(&mut again), next);
    assert!(silent(&again));
    datagrams_flow(&mut rig, &mut again, b"in step");
}

/// Exactly `n` bytes from `s`.
fn read_exact(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).expect("read");
    b
}

#[test]
fn a_host_frame_cut_by_host_server_dying_never_reaches_the_guest() {
    let (mut rig, mut control, _) = udp_companion(true);
    // A whole datagram larger than one RX buffer (given in pieces), then half of another.
    let whole = to_guest(&[7u8; 10_000]);
    let half = to_guest(b"never finished by host-server");
    control
        .write_all(&[&whole[..], &half[..12]].concat())
        .expect("write");
    std::thread::sleep(Duration::from_millis(20));
    host_server_dies(&mut rig, control);
    let mut got = Vec::new();
    for (h, d) in quiet_for(&mut rig, Duration::from_millis(300)) {
        assert!(matches!(h.op, op::RW | op::CREDIT_UPDATE), "{h:?}");
        got.extend(d);
    }
    assert!(
        got == whole,
        "the whole datagram, and nothing of the cut one: {} bytes",
        got.len()
    );
    let (mut again, _, _) = host_server_returns(&mut rig);
    again
        .write_all(&associated_frame(UDP_PORT))
        .expect("answer");
    let after = to_guest(b"after the restart");
    again.write_all(&after).expect("write");
    assert_eq!(
        recv_bytes(&mut rig, after.len()),
        after,
        "the guest's reader is at a frame boundary"
    );
}

#[test]
fn a_refused_udp_server_fails_one_receive_with_enetdown_then_stays_quiet() {
    let refused = shared_proto::to_vec(&shared_proto::ToGuest::Failed(
        shared_proto::Errno::EADDRINUSE,
    ))
    .expect("frame");
    // Refused, or given another port: the same for the guest.
    for answer in [refused, associated_frame(UDP_PORT + 1)] {
        let (mut rig, control, _) = udp_companion(true);
        host_server_dies(&mut rig, control);
        let (mut again, _, _) = host_server_returns(&mut rig);
        again.write_all(&answer).expect("answer");
        let enetdown = shared_proto::to_vec(&shared_proto::ToGuest::Failed(
            shared_proto::Errno::ENETDOWN,
        ))
        .expect("frame");
        assert_eq!(recv_bytes(&mut rig, enetdown.len()), enetdown);
        assert_eq!(rig.dev.muxer().reregistrations(), (0, 1));
        assert_eq!(rig.dev.muxer().redial_count(), 0);
        let conn = rig.conn();
        assert!(conn.refused_for_good() && !conn.registering_again());
        // The guest's sends are dropped, and it hears nothing more; nobody connects.
        for _ in 0..3 {
            rig.send(rig.hdr(op::RW), &to_host(&[1; 1000]));
        }
        assert!(quiet_for(&mut rig, Duration::from_millis(1500)).is_empty());
        rig.host.set_nonblocking(true).expect("nonblocking");
        assert!(rig.host.accept().is_err(), "a refused companion connected");
        // Its close ends the connection.
        rig.send(rig.hdr(op::RST), &[]);
        assert_eq!(rig.dev.muxer().connection_count(), 0);
        assert!(closes(&mut rig, &mut again));
    }
}

#[test]
fn a_client_association_on_port_0_is_not_kept() {
    let (mut rig, control, _) = companion_of(false, &udp_frame(0), &associated_frame(40_123));
    let conn = rig.conn();
    assert!(!conn.is_companion());
    host_server_dies(&mut rig, control);
    let got = recv_until(&mut rig, GUEST_PORT, op::SHUTDOWN, Duration::from_secs(2));
    assert!(
        got.iter().any(|(h, _)| h.op == op::SHUTDOWN),
        "the guest hears the end, as before: {got:?}"
    );
    assert_eq!(rig.dev.muxer().redial_count(), 0);
}

/// Set in the helper process of the test below.
const VCPU_RESET_HELPER: &str = "OUTSOCK_VSOCK_VCPU_RESET_HELPER";
const VCPU_RESET_OK: &str = "vcpu-reset-helper: the reset stayed inside the vCPU filter";

#[test]
fn a_device_reset_with_a_reregistration_pending_stays_inside_the_vcpu_filter() {
    // A guest's driver resets the device by an MMIO write, on a vCPU thread, whose seccomp
    // filter allows no timerfd call: run in a helper process (a violation ends it, exit 6).
    if std::env::var_os(VCPU_RESET_HELPER).is_some() {
        let (mut rig, control, _) = companion(true);
        host_server_dies(&mut rig, control);
        let _ = quiet_for(&mut rig, Duration::from_millis(50));
        assert_eq!(rig.dev.muxer().redial_count(), 1, "a redial is pending");
        let filters = crate::seccomp::Filters::new().expect("filters for this process");
        filters
            .apply(crate::seccomp::Role::Vcpu)
            .expect("install the vCPU filter");
        crate::devices::virtio::VirtioDevice::reset(&mut rig.dev);
        println!("{VCPU_RESET_OK}");
        std::process::exit(0);
    }
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, m)| m);
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            &format!(
                "{module}::a_device_reset_with_a_reregistration_pending_stays_inside_the_vcpu_filter"
            ),
            "--exact",
            "--nocapture",
        ])
        .env(VCPU_RESET_HELPER, "1")
        .output()
        .expect("run the helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(VCPU_RESET_OK),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
