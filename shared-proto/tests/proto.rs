//! Property tests over every message: encode → decode is the identity, and no byte string —
//! random, truncated, or a valid frame with corrupted bytes — makes the decoder panic.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::Path;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use shared_proto::lookup::{
    Counter, Direction, ListQuery, LookupErrorCode, LookupOp, LookupReply, LookupRequest,
    LookupResponse, MappingInfo, Tenant,
};
use shared_proto::outsource::{
    ConnectRequest, Datagram, IcmpRequest, LendRequest, ListenRequest, ToGuest, ToHost,
    UdpConnectRequest, UdpRequest, VmHello, VmList, VmStatus,
};
use shared_proto::{decode, decode_exact, to_vec, Errno, Message, ProtoError};

fn sockv4() -> impl Strategy<Value = SocketAddrV4> {
    (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9.-]{0,64}"
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..2048)
}

fn datagram() -> impl Strategy<Value = Datagram> {
    (sockv4(), payload()).prop_map(|(addr, payload)| Datagram { addr, payload })
}

fn to_host() -> impl Strategy<Value = ToHost> {
    prop_oneof![
        (name(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(
            |(vm, cid, port, takes_sockets)| ToHost::Hello(VmHello {
                vm,
                cid,
                port,
                takes_sockets,
            })
        ),
        (sockv4(), any::<bool>(), any::<bool>()).prop_map(|(dest, pass_fd, nonblocking)| {
            ToHost::Connect(ConnectRequest {
                dest,
                pass_fd,
                nonblocking,
            })
        }),
        (sockv4(), any::<u32>(), any::<bool>(), any::<u32>()).prop_map(
            |(addr, backlog, pass_fd, vsock_port)| {
                ToHost::Listen(ListenRequest {
                    addr,
                    backlog,
                    pass_fd,
                    vsock_port,
                    channel: false,
                })
            }
        ),
        (sockv4(), any::<bool>())
            .prop_map(|(bind, channel)| ToHost::Udp(UdpRequest { bind, channel })),
        (sockv4(), sockv4())
            .prop_map(|(bind, dest)| ToHost::UdpConnect(UdpConnectRequest { bind, dest })),
        (sockv4(), sockv4()).prop_map(|(bind, dest)| ToHost::Icmp(IcmpRequest { bind, dest })),
        datagram().prop_map(ToHost::Datagram),
        Just(ToHost::ListVms),
        Just(ToHost::Ended),
        (sockv4(), 0..=shared_proto::outsource::MAX_LENT)
            .prop_map(|(dest, sockets)| ToHost::Lend(LendRequest { dest, sockets })),
    ]
}

fn vm_list() -> impl Strategy<Value = VmList> {
    vec(
        (
            name(),
            ipv6(),
            name(),
            any::<bool>(),
            any::<(u32, u32, u32, u32)>(),
        )
            .prop_map(
                |(name, address, socket, running, (vmm_pid, cid, sockets, listeners))| VmStatus {
                    name,
                    address,
                    socket,
                    running,
                    vmm_pid,
                    cid,
                    sockets,
                    listeners,
                },
            ),
        0..8,
    )
    .prop_map(VmList)
}

fn to_guest() -> impl Strategy<Value = ToGuest> {
    prop_oneof![
        (sockv4(), sockv4(), any::<bool>(), any::<bool>()).prop_map(
            |(local, peer, fd_passed, in_progress)| ToGuest::Connected {
                local,
                peer,
                fd_passed,
                in_progress
            }
        ),
        sockv4().prop_map(|local| ToGuest::Listening { local }),
        sockv4().prop_map(|local| ToGuest::Associated { local }),
        any::<u16>().prop_map(|e| ToGuest::Failed(Errno(e))),
        (sockv4(), sockv4()).prop_map(|(peer, local)| ToGuest::Inbound { peer, local }),
        datagram().prop_map(ToGuest::Datagram),
        Just(ToGuest::Released),
        (datagram(), any::<u8>()).prop_map(|(datagram, ttl)| ToGuest::EchoReply { datagram, ttl }),
        (
            ipv6(),
            any::<u16>(),
            any::<u32>(),
            0..=shared_proto::outsource::MAX_LENT
        )
            .prop_map(|(ip, port, valid_ms, sockets)| ToGuest::Lent {
                target: std::net::SocketAddrV6::new(ip, port, 0, 0),
                valid_ms,
                sockets
            }),
    ]
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::Synthesised),
        Just(Direction::InboundPeer),
        Just(Direction::Static)
    ]
}

fn mapping() -> impl Strategy<Value = MappingInfo> {
    (
        any::<u32>(),
        ipv6(),
        vec(name(), 0..4),
        direction(),
        any::<(u64, u64, u64)>(),
        any::<u32>(),
    )
        .prop_map(
            |(dummy, v6, names, direction, (created, last_used, expires), pins)| MappingInfo {
                dummy: Ipv4Addr::from(dummy),
                v6,
                names,
                direction,
                created,
                last_used,
                expires,
                pins,
            },
        )
}

fn tenant() -> impl Strategy<Value = Tenant> {
    prop_oneof![
        name().prop_map(Tenant::Vm),
        any::<u32>().prop_map(Tenant::Uid),
    ]
}

fn lookup_request() -> impl Strategy<Value = LookupRequest> {
    let dummy = any::<u32>().prop_map(Ipv4Addr::from);
    let op = prop_oneof![
        dummy.clone().prop_map(|dummy| LookupOp::Resolve { dummy }),
        ipv6().prop_map(|v6| LookupOp::PeerDummy { v6 }),
        dummy.clone().prop_map(|dummy| LookupOp::Pin { dummy }),
        dummy.clone().prop_map(|dummy| LookupOp::Unpin { dummy }),
        (dummy.clone(), ipv6(), vec(name(), 0..4))
            .prop_map(|(dummy, v6, names)| LookupOp::StaticSet { dummy, v6, names }),
        (dummy, any::<bool>()).prop_map(|(dummy, force)| LookupOp::StaticRemove { dummy, force }),
        (ipv6(), any::<bool>()).prop_map(|(v6, allocate)| LookupOp::Show { v6, allocate }),
        (option::of(direction()), any::<u32>(), any::<u32>()).prop_map(
            |(direction, offset, limit)| LookupOp::List(ListQuery {
                direction,
                offset,
                limit
            })
        ),
        Just(LookupOp::Flush),
        Just(LookupOp::Stats),
        (any::<bool>(), payload()).prop_map(|(tcp, packet)| LookupOp::DnsQuery { tcp, packet }),
        (tenant(), any::<bool>(), payload()).prop_map(|(tenant, tcp, packet)| {
            LookupOp::DnsQueryAs {
                tenant,
                tcp,
                packet,
            }
        }),
    ];
    (any::<u32>(), op).prop_map(|(id, op)| LookupRequest { id, op })
}

fn lookup_response() -> impl Strategy<Value = LookupResponse> {
    let code = prop_oneof![
        Just(LookupErrorCode::PoolExhausted),
        Just(LookupErrorCode::Invalid),
        Just(LookupErrorCode::Internal),
        Just(LookupErrorCode::Forbidden),
        Just(LookupErrorCode::Busy),
    ];
    let reply = prop_oneof![
        mapping().prop_map(LookupReply::Resolved),
        Just(LookupReply::NotFound),
        any::<u32>().prop_map(|d| LookupReply::Dummy {
            dummy: Ipv4Addr::from(d)
        }),
        any::<u32>().prop_map(|pins| LookupReply::Pinned { pins }),
        (any::<u32>(), vec(mapping(), 0..8))
            .prop_map(|(total, entries)| LookupReply::Mappings { total, entries }),
        any::<u64>().prop_map(|entries| LookupReply::Flushed { entries }),
        vec((name(), any::<u64>()), 0..8).prop_map(|cs| LookupReply::Stats(
            cs.into_iter()
                .map(|(name, value)| Counter { name, value })
                .collect()
        )),
        payload().prop_map(|packet| LookupReply::DnsAnswer { packet }),
        (code, name()).prop_map(|(code, message)| LookupReply::Error { code, message }),
    ];
    (any::<u32>(), reply).prop_map(|(id, reply)| LookupResponse { id, reply })
}

/// Checks the properties every family must have, for one message.
fn check_family<M: Message + PartialEq + std::fmt::Debug>(msg: &M) -> Result<(), TestCaseError> {
    let bytes = to_vec(msg).expect("test messages are below the size limit");
    // Round trip, and the decoder reports exactly the bytes it used.
    let (back, used) = decode::<M>(&bytes)?.expect("a whole frame decodes");
    prop_assert_eq!(&back, msg);
    prop_assert_eq!(used, bytes.len());
    // Two frames back to back decode one at a time (stream framing).
    let mut two = bytes.clone();
    two.extend_from_slice(&bytes);
    prop_assert_eq!(decode::<M>(&two)?.map(|(_, n)| n), Some(bytes.len()));
    // Every strict prefix is "need more", never a message and never a panic.
    for cut in 0..bytes.len() {
        prop_assert!(
            decode::<M>(&bytes[..cut])?.is_none(),
            "prefix {} decoded",
            cut
        );
        prop_assert_eq!(decode_exact::<M>(&bytes[..cut]), Err(ProtoError::Truncated));
    }
    Ok(())
}

proptest! {
    #[test]
    fn to_host_round_trips(msg in to_host()) { check_family(&msg)?; }

    #[test]
    fn to_guest_round_trips(msg in to_guest()) { check_family(&msg)?; }

    #[test]
    fn vm_list_round_trips(msg in vm_list()) { check_family(&msg)?; }

    #[test]
    fn lookup_request_round_trips(msg in lookup_request()) { check_family(&msg)?; }

    #[test]
    fn lookup_response_round_trips(msg in lookup_response()) { check_family(&msg)?; }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        decode_all_families(&bytes);
    }

    /// A valid header in front of random bodies reaches the body decoders, which random bytes
    /// alone almost never would.
    #[test]
    fn random_bodies_never_panic(kind in any::<u8>(), body in vec(any::<u8>(), 0..256)) {
        let mut bytes = b"OS\x01".to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(&body);
        decode_all_families(&bytes);
    }

    /// Flipping any byte of a valid frame gives a typed error or some valid message, never a
    /// panic.
    #[test]
    fn corrupted_frames_never_panic(msg in lookup_response(), at in any::<usize>(), x in 1u8..) {
        let mut bytes = to_vec(&msg).unwrap();
        let i = at % bytes.len();
        bytes[i] ^= x;
        decode_all_families(&bytes);
    }
}

fn decode_all_families(bytes: &[u8]) {
    let _ = decode::<ToHost>(bytes);
    let _ = decode::<ToGuest>(bytes);
    let _ = decode::<VmList>(bytes);
    let _ = decode::<LookupRequest>(bytes);
    let _ = decode::<LookupResponse>(bytes);
}

#[test]
fn header_errors_are_typed() {
    assert_eq!(
        decode::<ToHost>(b"XX\x01\x02\0\0\0\0"),
        Err(ProtoError::BadMagic(0x5858))
    );
    assert_eq!(
        decode::<ToHost>(b"OS\x09\x02\0\0\0\0"),
        Err(ProtoError::UnsupportedVersion(9))
    );
    assert_eq!(
        decode::<ToHost>(b"OS\x01\x02\xff\xff\xff\xff"),
        Err(ProtoError::TooLarge { len: 0xffff_ffff })
    );
    assert_eq!(
        decode::<ToHost>(b"OS\x01\xee\0\0\0\0"),
        Err(ProtoError::UnknownKind {
            family: "to-host",
            kind: 0xee
        })
    );
    // Bad magic is caught as soon as two bytes are in, before a whole header.
    assert_eq!(decode::<ToHost>(b"GE"), Err(ProtoError::BadMagic(0x4745)));
    // A body with a trailing byte is rejected, not silently accepted.
    let mut frame = to_vec(&ToHost::Udp(UdpRequest {
        bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        channel: true,
    }))
    .unwrap();
    frame[7] += 1;
    frame.push(0);
    assert_eq!(
        decode::<ToHost>(&frame),
        Err(ProtoError::TrailingBytes { count: 1 })
    );
}

#[test]
fn forged_counts_do_not_allocate() {
    // A Mappings reply claiming 2^32-1 entries in a 12-byte body must fail fast as truncated.
    let body = [0, 0, 0, 7, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
    let mut frame = b"OS\x01\x24".to_vec();
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&body);
    assert_eq!(decode::<LookupResponse>(&frame), Err(ProtoError::Truncated));
}

#[test]
fn oversized_messages_are_refused_by_the_encoder() {
    let big = ToHost::Datagram(Datagram {
        addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9),
        payload: vec![0; shared_proto::MAX_BODY + 1],
    });
    assert!(matches!(to_vec(&big), Err(ProtoError::TooLarge { .. })));
}

/// The fuzz target's corpus (fuzz/corpus/decode) replayed on stable: every file must decode to a
/// typed result without panicking. The corpus holds valid frames of every family and the inputs
/// that once mattered, so this is the fuzzer's regression suite.
#[test]
fn fuzz_corpus_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        decode_all_families(&bytes);
        count += 1;
    }
    println!("replayed {count} corpus inputs from {}", dir.display());
    assert!(
        count >= 20,
        "corpus at {} has only {count} inputs",
        dir.display()
    );
}

/// The corpus' frames of a process's own connect (`lend-request`, `lent-answer`) are what the
/// encoder writes today.
#[test]
fn lend_frames_match_their_corpus_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    let request = ToHost::Lend(LendRequest {
        dest: SocketAddrV4::new(Ipv4Addr::new(10, 170, 160, 7), 80),
        sockets: 4,
    });
    let answer = ToGuest::Lent {
        target: std::net::SocketAddrV6::new("fd00:64::80".parse().unwrap(), 80, 0, 0),
        valid_ms: 1000,
        sockets: 4,
    };
    let seed = |n: &str| std::fs::read(dir.join(n)).unwrap();
    assert_eq!(to_vec(&request).unwrap(), seed("lend-request"));
    assert_eq!(to_vec(&answer).unwrap(), seed("lent-answer"));
    assert_eq!(
        decode_exact::<ToHost>(&seed("lend-request")).unwrap(),
        request
    );
    assert_eq!(
        decode_exact::<ToGuest>(&seed("lent-answer")).unwrap(),
        answer
    );
}

/// The corpus' ICMP frames (seed-032, seed-033) are what the encoder writes today.
#[test]
fn icmp_frames_match_their_corpus_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    let dest = SocketAddrV4::new(Ipv4Addr::new(10, 170, 160, 2), 0);
    let request = ToHost::Icmp(IcmpRequest {
        bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        dest,
    });
    let mut message = vec![0, 0, 0, 0, 0x42, 0x42, 0, 5];
    message.extend_from_slice(b"outsock ping");
    let reply = ToGuest::EchoReply {
        datagram: Datagram {
            addr: dest,
            payload: message,
        },
        ttl: 64,
    };
    let seed = |n: &str| std::fs::read(dir.join(n)).unwrap();
    assert_eq!(to_vec(&request).unwrap(), seed("seed-032"));
    assert_eq!(to_vec(&reply).unwrap(), seed("seed-033"));
    assert_eq!(decode_exact::<ToHost>(&seed("seed-032")).unwrap(), request);
    assert_eq!(decode_exact::<ToGuest>(&seed("seed-033")).unwrap(), reply);
}
