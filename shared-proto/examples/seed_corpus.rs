//! Writes the seed corpus for the `decode` fuzz target: one valid frame of every message kind,
//! plus a few hand-made malformed ones. Run: `cargo run -p shared-proto --example seed_corpus --
//! fuzz/corpus/decode`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use shared_proto::lookup::{
    Counter, Direction, ListQuery, LookupErrorCode, LookupOp, LookupReply, LookupRequest,
    LookupResponse, MappingInfo,
};
use shared_proto::outsource::{
    ConnectRequest, Datagram, ListenRequest, ToGuest, ToHost, UdpRequest, VmHello,
};
use shared_proto::{to_vec, Errno};

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus/decode".into());
    std::fs::create_dir_all(&dir)?;
    let dummy = Ipv4Addr::new(10, 170, 160, 7);
    let dest = SocketAddrV4::new(dummy, 80);
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080);
    let v6: Ipv6Addr = "fd00:64::80".parse().expect("literal");
    let mapping = MappingInfo {
        dummy,
        v6,
        names: vec!["v6only.outsock.test".into()],
        direction: Direction::Synthesised,
        created: 1_700_000_000,
        last_used: 1_700_000_100,
        expires: 1_700_000_700,
        pins: 1,
    };
    let datagram = Datagram {
        addr: dest,
        payload: b"ping".to_vec(),
    };
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let host = [
        ToHost::Hello(VmHello {
            vm: "vm0".into(),
            cid: 3,
            port: 1024,
            takes_sockets: false,
        }),
        ToHost::Connect(ConnectRequest {
            dest,
            pass_fd: true,
            nonblocking: false,
        }),
        ToHost::Listen(ListenRequest {
            addr: any,
            backlog: 128,
            pass_fd: false,
            vsock_port: 5000,
            channel: false,
        }),
        ToHost::Udp(UdpRequest {
            bind: any,
            channel: false,
        }),
        ToHost::Datagram(datagram.clone()),
    ];
    for m in &host {
        frames.push(to_vec(m).expect("small"));
    }
    let guest = [
        ToGuest::Connected {
            local: any,
            peer: dest,
            fd_passed: false,
            in_progress: true,
        },
        ToGuest::Listening { local: any },
        ToGuest::Associated { local: any },
        ToGuest::Failed(Errno::ECONNREFUSED),
        ToGuest::Inbound {
            peer: SocketAddrV4::new(Ipv4Addr::new(172, 21, 112, 9), 40000),
            local: any,
        },
        ToGuest::Datagram(datagram),
    ];
    for m in &guest {
        frames.push(to_vec(m).expect("small"));
    }
    let ops = [
        LookupOp::Resolve { dummy },
        LookupOp::PeerDummy { v6 },
        LookupOp::Pin { dummy },
        LookupOp::Unpin { dummy },
        LookupOp::List(ListQuery {
            direction: Some(Direction::InboundPeer),
            offset: 0,
            limit: 50,
        }),
        LookupOp::Flush,
        LookupOp::Stats,
        LookupOp::DnsQuery {
            tcp: false,
            packet: vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        },
    ];
    for (id, op) in ops.into_iter().enumerate() {
        frames.push(
            to_vec(&LookupRequest {
                id: u32::try_from(id).expect("few"),
                op,
            })
            .expect("small"),
        );
    }
    let replies = [
        LookupReply::Resolved(mapping.clone()),
        LookupReply::NotFound,
        LookupReply::Dummy { dummy },
        LookupReply::Pinned { pins: 2 },
        LookupReply::Mappings {
            total: 1,
            entries: vec![mapping],
        },
        LookupReply::Flushed { entries: 12 },
        LookupReply::Stats(vec![Counter {
            name: "queries".into(),
            value: 5,
        }]),
        LookupReply::DnsAnswer {
            packet: vec![0x12, 0x34, 0x81, 0x80],
        },
        LookupReply::Error {
            code: LookupErrorCode::PoolExhausted,
            message: "pool full".into(),
        },
    ];
    for (id, reply) in replies.into_iter().enumerate() {
        frames.push(
            to_vec(&LookupResponse {
                id: u32::try_from(id).expect("few"),
                reply,
            })
            .expect("small"),
        );
    }
    // Malformed inputs worth keeping: bad magic, future version, huge length, forged count.
    frames.push(b"GET / HTTP/1.0\r\n\r\n".to_vec());
    frames.push(b"OS\x02\x01\0\0\0\0".to_vec());
    frames.push(b"OS\x01\x05\xff\xff\xff\xff".to_vec());
    frames.push(b"OS\x01\x24\0\0\0\x0c\0\0\0\x07\0\0\0\x01\xff\xff\xff\xff".to_vec());
    for (i, frame) in frames.iter().enumerate() {
        std::fs::write(format!("{dir}/seed-{i:03}"), frame)?;
    }
    println!("wrote {} seed inputs to {dir}", frames.len());
    Ok(())
}
