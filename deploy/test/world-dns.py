"""The test world's DNS server for deploy/test/systemd (dns-cache's upstream there).

    python3 world-dns.py ADDRESS NAME=IPV6 ...

Listens on [ADDRESS]:53 (UDP) and answers AAAA for each NAME, NODATA for its other types and
NXDOMAIN for any other name. Nothing else: no TCP, no EDNS, no compression in questions.
"""
import socket
import struct
import sys

addr = sys.argv[1]
names = {}
for arg in sys.argv[2:]:
    name, v6 = arg.split("=", 1)
    names[name.lower().rstrip(".")] = socket.inet_pton(socket.AF_INET6, v6)

s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((addr, 53))
while True:
    q, peer = s.recvfrom(4096)
    if len(q) < 17:
        continue
    i, labels = 12, []
    while i < len(q) and q[i]:
        labels.append(q[i + 1 : i + 1 + q[i]].decode(errors="replace").lower())
        i += 1 + q[i]
    if i + 5 > len(q):
        continue
    qtype = struct.unpack(">H", q[i + 1 : i + 3])[0]
    question = q[12 : i + 5]
    v6 = names.get(".".join(labels))
    answer = b""
    if v6 is not None and qtype == 28:
        # A pointer to the question's name, AAAA IN, TTL 60, 16 bytes.
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 28, 1, 60, 16) + v6
    rcode = 0 if v6 is not None else 3
    # QR, AA, the query's RD; one question, the answer if any.
    flags = 0x8400 | (q[2] & 1) << 8 | rcode
    header = q[:2] + struct.pack(">HHHHH", flags, 1, 1 if answer else 0, 0, 0)
    s.sendto(header + question + answer, peer)
