#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/seed-*): small, real-looking
inputs in each target's input format (see the target bodies' docs). Run from the repository root:
    python3 fuzz/seeds.py
The decode target's seeds come from shared-proto's example (seed_corpus); vsock_device keeps its
hand-made seeds and gets a few more here. Files it writes are overwritten, others are kept."""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- DNS ---------------------------------------------------------------------------------------
def qname(name):
    out = b""
    for label in name.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def query(name, qtype=1, qid=0xbeef, flags=0x0100, edns=None, qclass=1):
    """A query; edns = (payload, do) adds an OPT record."""
    ar = 1 if edns else 0
    p = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, ar) + qname(name) + struct.pack(">HH", qtype, qclass)
    if edns:
        payload, do = edns
        p += b"\0" + struct.pack(">HHBBHH", 41, payload, 0, 0, 0x8000 if do else 0, 0)
    return p


A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 255


def rr(rtype, rdata, ttl=300, name=b"\xc0\x0c"):
    """A record owned by the question's name (a pointer to offset 12) unless `name` says."""
    return name + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


def v6(s):
    import ipaddress
    return ipaddress.IPv6Address(s).packed


def v4(s):
    import ipaddress
    return ipaddress.IPv4Address(s).packed


def soa():
    return rr(SOA, qname("ns.test") + qname("h.test") + struct.pack(">IIIII", 1, 2, 3, 4, 60), name=qname("test"))


def upstream(flags, records, an=0, ns=0, ar=0):
    """A chunk for the dns_resolve stand-in: flags, counts, then the records."""
    return struct.pack(">HHHH", flags, an, ns, ar)[:8] + records


def lp(b):
    return struct.pack("<H", len(b)) + b


queries = {
    "a": query("v6only.test", A),
    "a-edns-do": query("multi.test", A, edns=(1232, True)),
    "aaaa": query("v6only.test", AAAA),
    "ptr": query("7.160.170.10.in-addr.arpa", PTR),
    "mx": query("mail.test", MX, edns=(4096, False)),
    "literal": query("2001-db8--1.ipv6.outsock", A),
    "cd": query("dnssec.test", A, flags=0x0110),
    "any-chaos": query("version.bind", TXT, qclass=3),
    "upper": query("V6Only.Test", A),
    "pointer": bytes.fromhex("beef01000001000000000000") + b"\xc0\x0c\x00\x01\x00\x01",
    "notify": query("zone.test", SOA, flags=0x2000),
    "two-questions": bytes.fromhex("beef01000002000000000000") + qname("a.test") + b"\0\1\0\1" + qname("b.test") + b"\0\1\0\1",
    "edns-v1": query("a.test", A, edns=(1232, False))[:-6] + b"\x01\x00\x00\x00\x00\x00",
    "response": query("a.test", A, flags=0x8180),
    "short": bytes.fromhex("beef0100"),
}
for name, q in queries.items():
    put("dns_fast", name, q)

NOERROR_RA = 0x8180
resolve = {
    # flags byte: bit0 TCP, bit1 egress, bits 2-7 clock seconds.
    "synth-one": (0x04, queries["a"], [upstream(NOERROR_RA, rr(AAAA, v6("2001:db8::1")), an=1)]),
    "synth-three": (0x04, queries["a-edns-do"], [upstream(NOERROR_RA, b"".join(rr(AAAA, v6("2001:db8::10%d" % i)) for i in range(1, 4)), an=3)]),
    "cname": (0x04, query("alias.test", A), [upstream(NOERROR_RA, rr(CNAME, qname("v6only.test")) + rr(AAAA, v6("2001:db8::2"), name=qname("v6only.test")), an=2)]),
    "nxdomain": (0x04, query("nope.test", A), [upstream(0x8183, soa(), ns=1)]),
    "nodata": (0x04, query("v4only.test", A), [upstream(NOERROR_RA, soa(), ns=1), upstream(NOERROR_RA, rr(A, v4("203.0.113.20")), an=1)]),
    "egress-dual": (0x06, query("dual.test", A), [upstream(NOERROR_RA, rr(A, v4("203.0.113.10")), an=1), upstream(NOERROR_RA, rr(AAAA, v6("2001:db8::2")), an=1)]),
    "denied": (0x04, query("dead.test", A), [upstream(NOERROR_RA, rr(AAAA, v6("2001:db8:dead::1")), an=1)]),
    "mx-forward": (0x05, queries["mx"], [upstream(NOERROR_RA, rr(MX, struct.pack(">H", 10) + qname("mail.test")), an=1)]),
    "ptr": (0x04, queries["ptr"], [upstream(0x8183, soa(), ns=1)]),
    "literal": (0x04, queries["literal"], []),
    "servfail": (0x04, queries["a"], [upstream(0x8182, b"")]),
    "no-upstream": (0x04, queries["a"], []),
    "big-tcp": (0x05, query("multi.test", A), [upstream(NOERROR_RA, b"".join(rr(AAAA, v6("2001:db8::%x" % i)) for i in range(1, 60)), an=59)]),
    "big-udp": (0x04, query("multi.test", A), [upstream(NOERROR_RA, b"".join(rr(AAAA, v6("2001:db8::%x" % i)) for i in range(1, 60)), an=59)]),
    "formerr": (0x04, queries["two-questions"], []),
    "garbage": (0x04, bytes.fromhex("beef0100000100000000") + b"\xff" * 10, []),
    "aaaa": (0x04, queries["aaaa"], []),
    "chaos": (0x04, queries["any-chaos"], [upstream(0x8185, b"")]),
}
for name, (flags, q, chunks) in resolve.items():
    put("dns_resolve", name, bytes([flags]) + lp(q) + b"".join(lp(c) for c in chunks))

# --- shared-proto frames -----------------------------------------------------------------------
def frame(kind, body):
    return b"OS\x01" + bytes([kind]) + struct.pack(">I", len(body)) + body


def sock(ip, port):
    return v4(ip) + struct.pack(">H", port)


def string(s):
    return struct.pack(">H", len(s)) + s.encode()


def hello(vm="vm0", cid=3, port=1024, takes=None):
    return frame(1, string(vm) + struct.pack(">II", cid, port) + (bytes([takes]) if takes is not None else b""))


CONNECT = frame(2, sock("10.170.160.7", 80) + b"\x01\x00")
CONNECT_NB = frame(2, sock("10.170.160.7", 443) + b"\x01\x01")
LISTEN = frame(3, sock("0.0.0.0", 8080) + struct.pack(">IBI", 128, 0, 5000))
UDP = frame(4, sock("0.0.0.0", 0))


def datagram(ip, port, payload, kind=5):
    return frame(kind, sock(ip, port) + struct.pack(">I", len(payload)) + payload)


UDP_CONNECT = frame(6, sock("0.0.0.0", 0) + sock("10.170.160.9", 53))
ICMP = frame(7, sock("0.0.0.0", 0) + sock("10.170.160.9", 0))
LIST_VMS = frame(8, b"")
LEND = frame(9, sock("10.170.160.7", 80) + b"\x04")
LEND_TOO_MANY = frame(9, sock("10.170.160.7", 80) + b"\xff")
DG = datagram("10.170.160.1", 53, queries["a"])
UDP_SERVER = frame(4, sock("0.0.0.0", 5353))
ASSOCIATED = frame(18, sock("10.170.160.1", 5353))
LISTENING = frame(17, sock("0.0.0.0", 8080))


def op(tag, body):
    return bytes([tag]) + struct.pack("<H", len(body)) + body


# host_session: byte 0 bit 0 = VMM of vm0; ops: 0 write, 1 write + fd, 2 packet, 3 shutdown.
session = {
    "process-connect": (0, [op(0, CONNECT + b"early data")]),
    "process-connect-fd-attached": (0, [op(1, CONNECT)]),
    "process-listen-split": (0, [op(0, LISTEN[:5]), op(0, LISTEN[5:])]),
    "process-hello": (0, [op(0, hello())]),
    "process-datagram-first": (0, [op(0, DG)]),
    "process-udp-packets": (0, [op(0, UDP), op(2, DG), op(2, DG[:-3]), op(2, CONNECT), op(2, b"")]),
    "process-list-vms": (0, [op(0, LIST_VMS)]),
    "process-lend": (0, [op(0, LEND + LEND)]),
    "process-lend-too-many": (0, [op(0, LEND_TOO_MANY)]),
    "vmm-lend": (1, [op(0, hello(takes=1) + LEND)]),
    "vmm-connect": (1, [op(0, hello() + CONNECT)]),
    "vmm-hello-takes": (1, [op(0, hello(takes=1) + CONNECT_NB)]),
    "vmm-no-hello": (1, [op(0, CONNECT)]),
    "vmm-list-vms": (1, [op(0, LIST_VMS)]),
    "vmm-other-vm": (1, [op(0, hello("vm1") + CONNECT)]),
    "vmm-unknown-vm": (1, [op(0, hello("nope") + CONNECT)]),
    "vmm-two-hellos": (1, [op(0, hello() + hello())]),
    "vmm-udp-datagrams": (1, [op(0, hello() + UDP + DG), op(1, b"\x00" + DG[1:]), op(0, DG + hello())]),
    "vmm-udp-leftover-split": (1, [op(0, hello() + UDP + DG[:9]), op(0, DG[9:] + DG)]),
    "vmm-icmp": (1, [op(0, hello() + ICMP + datagram("10.170.160.9", 0, b"\x08\x00\x00\x00\x00\x01\x00\x01"))]),
    "vmm-udp-connect": (1, [op(0, hello() + UDP_CONNECT)]),
    "garbage": (0, [op(0, b"GET / HTTP/1.0\r\n\r\n")]),
    "bad-version": (0, [op(0, b"OS\x02\x01\0\0\0\0")]),
    "too-large": (0, [op(0, b"OS\x01\x05\xff\xff\xff\xff")]),
    "fd-then-shutdown": (1, [op(1, b"\x01" + hello()[1:]), op(3, b""), op(0, CONNECT)]),
}
for name, (who, ops) in session.items():
    put("host_session", name, bytes([who]) + b"".join(ops))

# guest_forwarder: ops tag even = query datagram from a program, odd = bytes from host-server.
def reply_frame(payload):
    return datagram("10.170.160.1", 53, payload)


answer = bytearray(queries["a"])
answer[2] |= 0x80
fwd = {
    "query-reply": [op(0, queries["a"]), op(1, reply_frame(bytes(answer)))],
    "two-queries-one-reply": [op(0, queries["a"]), op(0, query("b.test", qid=7)), op(1, reply_frame(bytes(answer)) + reply_frame(b"\x00"))],
    "short-query": [op(0, b"\xbe\xef\x01"), op(1, reply_frame(b"\xbe\xef"))],
    "reply-not-asked": [op(1, reply_frame(query("c.test", qid=9)))],
    "other-frames": [op(0, queries["a"]), op(1, frame(0x12, sock("0.0.0.0", 40000)) + frame(0x13, b"\x00\x6f") + reply_frame(bytes(answer)))],
    "truncated-frame": [op(0, queries["a"]), op(1, reply_frame(bytes(answer))[:-4])],
    "garbage": [op(1, b"GET / HTTP/1.0\r\n\r\n")],
}
for name, ops in fwd.items():
    put("guest_forwarder", name, b"".join(ops))

# hybrid_lines: pieces (close byte, u8 length, bytes).
def piece(b, close=0):
    return bytes([close, len(b)]) + b


hybrid = {
    "connect": [piece(b"CONNECT 5000\n")],
    "connect-then-data": [piece(b"CONNECT 22\nSSH-2.0-x\r\n")],
    "ok": [piece(b"OK 1073741824\n")],
    "leading-zeros": [piece(b"CONNECT 0052\n")],
    "no-newline-close": [piece(b"CONNECT 52", 1)],
    "too-long": [piece(b"CONNECT " + b"9" * 40 + b"\n")],
    "overflow": [piece(b"CONNECT 99999999999\n")],
    "bad-verb": [piece(b"connect 5000\n"), piece(b"OK 5\n"), piece(b"\n")],
    "several": [piece(b"CONNECT 1\n"), piece(b"CONNECT -1\n", 1), piece(b"CONNECT 4294967295\n"), piece(b"CONNECT 4294967296\n")],
}
for name, ps in hybrid.items():
    put("hybrid_lines", name, b"".join(ps))

# serial_i8042: tag%4 0 write(sel, value), 1 read(sel), 2 input(len, bytes), 3 Ctrl+Alt+Del.
# Selectors: 0-7 COM1 (0 THR/RBR, 1 IER, 2 IIR/FCR, 3 LCR, 4 MCR, 5 LSR, 6 MSR, 7 SCR),
# 8-12 i8042 0x60-0x64 (8 data, 12 command/status), 13 ACPI PM.
def w(sel, v):
    return bytes([0, sel, v])


def r(sel):
    return bytes([1, sel])


ports = {
    "uart-print": w(1, 0x02) + b"".join(w(0, c) for c in b"boot ok\n") + r(5) + r(2),
    "uart-divisor": w(3, 0x80) + w(0, 0x01) + w(1, 0x00) + w(3, 0x03) + w(2, 0xc7) + w(4, 0x0b) + r(6) + w(7, 0x55) + r(7),
    "uart-input": w(1, 0x01) + bytes([2, 3]) + b"ls\n" + r(2) + r(0) + r(0) + r(0) + r(0) + r(5),
    "uart-loopback": w(4, 0x10) + w(0, 0x41) + r(5) + r(0) + r(6),
    "i8042-probe": w(12, 0xaa) + r(12) + r(8) + w(12, 0x20) + r(8) + w(12, 0x60) + w(8, 0x47) + w(12, 0xab) + r(8),
    "i8042-kbd": w(8, 0xff) + r(8) + r(8) + w(8, 0xf0) + w(8, 0x02) + r(8) + w(8, 0xf2) + r(8) + r(8) + r(8) + w(8, 0xf4) + bytes([3]) + r(8) + r(8) + r(8),
    "i8042-reset": w(12, 0xd1) + w(8, 0xfe) + w(12, 0xfe),
    "i8042-outport": w(12, 0xd0) + r(8) + w(12, 0xd2) + w(8, 0x1c) + r(8) + w(12, 0xd3) + w(8, 0x00) + w(12, 0xa7) + w(12, 0xa8) + w(12, 0xa9) + r(8),
    "acpi-sleep": w(13, 0x34) + w(13, 0x00),
    "nobody": w(200, 1) + r(201) + w(14, 0),
    "ctrl-alt-del-disabled": w(12, 0x60) + w(8, 0x10) + bytes([3]) + r(8),
}
for name, b in ports.items():
    put("serial_i8042", name, b)

# vsock_device: kinds %8: 0 raw chain, 1 packet, 2 post RX, 3 raw RX, 4 host side, 5 poll,
# 6 MMIO write (offset u16, width, value u64; offset 0x1ff re-inits), 7 MMIO read.
def mw(off, v, width=2):
    return bytes([6]) + struct.pack("<HB", off, width) + struct.pack("<Q", v)


def mr(off, width=2):
    return bytes([7]) + struct.pack("<HB", off, width)


def pkt(op_, dlen=0, src_port=0, dst_port=0, payload=None):
    # 1: src_cid choice, src_port, dst_port, type (1 stream), op, flags, buf_alloc, fwd_cnt, dlen,
    # the payload (dlen bytes of the input), len mode
    if payload is None:
        payload = b"\x5a" * dlen
    else:
        dlen = len(payload)
    return (bytes([1, 0, src_port, dst_port, 1, op_, 0]) + struct.pack("<II", 65536, 0)
            + struct.pack("<H", dlen) + payload + b"\x01")


def host_writes(data, pick=0):
    # 4: accept what is pending, then the picked host-server stream gets `data` (1-256 bytes)
    return bytes([4, pick, len(data) - 1]) + data


vsock = {
    "mmio-reset-reinit": pkt(1) + mw(0x70, 0) + mr(0x70) + mw(0x1ff, 0) + pkt(1) + bytes([2, 4]) + struct.pack("<H", 4096) + bytes([4, 0, 5]),
    "mmio-registers": b"".join(mr(o) for o in (0x0, 0x4, 0x8, 0xc, 0x10, 0x34, 0x44, 0x60, 0x70, 0x100, 0x104)) + mr(0x100, 3) + mw(0x64, 1),
    "mmio-bad-queue": mw(0x70, 0) + mw(0x70, 1) + mw(0x70, 3) + mw(0x70, 11) + mw(0x30, 0) + mw(0x38, 3) + mw(0x80, 0xfff0) + mw(0x84, 0xffffffff) + mw(0x44, 1) + mw(0x70, 15) + mr(0x70) + pkt(1),
    "mmio-notify": mw(0x50, 1) + mw(0x50, 7) + mw(0x50, 1, 1) + mw(0x14, 1) + mr(0x10),
    "connect-rw-shutdown": pkt(1) + bytes([4, 0, 0]) + b"\x00" + bytes([2, 4]) + struct.pack("<H", 4096) + pkt(5, 100) + pkt(3) + pkt(4) + bytes([5]),
}
# Companions (the VMM keeps them across host-server restarts): a guest UDP server's `Udp` frame
# answered `Associated`, then datagram frames both ways and host-server's stream closed (the
# VMM dials again); a guest listener's `Listen` answered `Listening`, then closed (the frames
# are shared-proto's, above).
RX = bytes([2, 4]) + struct.pack("<H", 4096)
vsock["udp-server-companion"] = (pkt(1) + RX + pkt(5, payload=UDP_SERVER) + host_writes(ASSOCIATED)
                                 + bytes([5]) + pkt(5, payload=DG) + host_writes(DG) + bytes([5])
                                 + host_writes(DG[:7], pick=0) + bytes([4, 0x80]) + bytes([5, 5])
                                 + pkt(5, payload=DG[:9]) + bytes([5]))
vsock["listener-companion"] = (pkt(1) + RX + pkt(5, payload=LISTEN) + host_writes(LISTENING)
                               + bytes([5]) + bytes([4, 0x80]) + bytes([5, 5]))
for name, b in vsock.items():
    put("vsock_device", name, b)

