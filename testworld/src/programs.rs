//! Test programs that both modes run unmodified against the world: in process mode in the
//! `legacy` namespace (e2e), in VM mode inside the guest (the lab's `vm` group).

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
