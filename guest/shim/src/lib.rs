//! liboutsock: the outsourcing layer. Loaded into an unmodified IPv4-only program (LD_PRELOAD in
//! process mode, /etc/ld.so.preload in the guest), it interposes libc so that the program's
//! AF_INET sockets are carried out by host-server over IPv6 (DESIGN.md §7):
//!
//! - TCP connect to a non-loopback IPv4 address asks host-server, which connects over IPv6 and
//!   passes the socket back (SCM_RIGHTS); it replaces the program's fd, so the data path is the
//!   kernel's own (`interpose`).
//! - listen makes host-server listen on the host's IPv6 address; accept receives each
//!   connection's socket with the peer's dummy IPv4 address.
//! - UDP sockets become associations with host-server carrying framed datagrams (`udp`).
//! - getaddrinfo and gethostbyname answer from dns-cache (`resolve`), because glibc's own
//!   resolver makes its socket calls where no preload sees them.
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

pub mod dns;
pub mod interpose;
mod real;
pub mod resolve;
mod sockaddr;
pub mod table;
pub mod transport;
pub mod udp;
mod vmlisten;
