//! liboutsock: the outsourcing layer. Loaded into an unmodified IPv4-only program (LD_PRELOAD in
//! process mode, /etc/ld.so.preload in the guest), it interposes libc so that the program's
//! AF_INET sockets are carried out by host-server over IPv6 (DESIGN.md §7):
//!
//! - TCP connect to a non-loopback IPv4 address: host-server routes it (the dummy's IPv6
//!   address, the destination policy) and lends unconnected IPv6 sockets of its network, which
//!   the program connects itself, a route and the spares kept for its next connects — a spare
//!   stands in for the program's next TCP socket from `socket()` on (`lend`);
//!   where host-server must connect (the guest DNS address, IPv4 egress, lending off) it
//!   connects over IPv6 and passes the socket back (SCM_RIGHTS, `connect`). Either socket
//!   replaces the program's fd, so the data path is the kernel's own (`interpose`).
//! - listen makes host-server listen on the host's IPv6 address; accept receives each
//!   connection's socket with the peer's dummy IPv4 address (`listen`).
//! - UDP sockets become associations with host-server carrying framed datagrams (`udp`, `dgram`).
//! - getaddrinfo and gethostbyname answer from dns-cache (`resolve`), because glibc's own
//!   resolver makes its socket calls where no preload sees them.
//! - Programs with their own DNS code (BIND's dig, kdig) send to the nameservers of
//!   /etc/resolv.conf: UDP and TCP to one of them on port 53 go to the guest DNS address
//!   instead, and the replies seem to come from the nameserver asked (`nameserver`).
//! - `syscall(3)` with the number of a call the shim interposes (libuv's
//!   `syscall(__NR_recvmmsg, …)`) is the shim's own call (`syscall`, x86-64).
//! - Loopback, AF_INET6, AF_UNIX and everything else pass through untouched.
//!
//! Inside a VM (`transport=vsock:<port>`, see `transport`) every stream is an AF_VSOCK stream
//! to the host that the VMM bridges to host-server: connects are relayed (the vsock stream
//! becomes the program's socket), listeners accept inbound streams on a vsock port of their
//! own (`vmlisten`), and name resolution is left to glibc, whose resolver asks the image's
//! DNS forwarder on 127.0.0.1.
//!
//! State lives in a lock-free fd table (`table`), so nothing can deadlock after fork. When
//! host-server is unreachable, calls fail with ENETUNREACH and one line on stderr says why.
//!
//! Modules, by layer (imports point down only):
//!
//! - The exported libc replacements: `interpose` (socket, connect, bind, listen, accept, …),
//!   `udp` (the datagram calls), `resolve` (getaddrinfo, gethostbyname, …), `closerange`
//!   (close_range, closefrom), `syscall` (syscall(3), dispatching to the others).
//! - The work of one outsourcing call: `lend` (a TCP connect on a lent socket), `connect` (TCP
//!   through host-server), `listen` and `vmlisten` (listeners in
//!   process mode and in a VM), `dgram` (UDP associations and passed UDP sockets).
//! - Plain helpers: `claim` (one frame at a time on a shared stream), `fd` (errno, installing
//!   descriptors), `keeper` (channels the supervisor's keeper holds across host-server
//!   restarts), `sockopt` (options carried over), `slot` (a try-lock),
//!   `transport` (the stream to host-server), `table` (per-fd state), `sockaddr`, `dns` (DNS
//!   messages), `nameserver` (the guest DNS address, resolv.conf's nameservers), `real`
//!   (libc's own functions).
//!
//! Almost all of it is FFI, so `unsafe` is allowed module by module: only `table`, `claim`,
//! `nameserver` and `dns` are safe code.

#![deny(unsafe_code)]

// The exported libc replacements.
#[allow(unsafe_code)]
pub mod closerange;
#[allow(unsafe_code)]
pub mod interpose;
#[allow(unsafe_code)]
pub mod resolve;
#[allow(unsafe_code)]
pub mod syscall;
#[allow(unsafe_code)]
pub mod udp;

// The work of one outsourcing call.
#[allow(unsafe_code)]
mod connect;
#[allow(unsafe_code)]
mod dgram;
#[allow(unsafe_code)]
mod lend;
#[allow(unsafe_code)]
mod listen;
#[allow(unsafe_code)]
mod vmlisten;

// Plain helpers.
mod claim;
pub mod dns;
#[allow(unsafe_code)]
mod fd;
#[allow(unsafe_code)]
mod keeper;
pub mod nameserver;
#[allow(unsafe_code)]
mod real;
#[allow(unsafe_code)]
mod slot;
#[allow(unsafe_code)]
mod sockaddr;
#[allow(unsafe_code)]
mod sockopt;
pub mod table;
#[allow(unsafe_code)]
pub mod transport;
