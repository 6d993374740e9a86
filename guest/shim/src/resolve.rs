//! Name resolution in process mode. glibc's resolver makes its socket calls inside libc, where
//! no preloaded library sees them (DESIGN.md §7), so the shim answers the resolver API itself:
//! it sends DNS queries to the guest DNS address through a host-server UDP association, and
//! dns-cache answers (dummy IPv4 addresses for names, names for dummies).
//!
//! Covered: `getaddrinfo`, `gethostbyname`, `gethostbyname_r`, `gethostbyname2(_r)` (AF_INET),
//! `gethostbyaddr(_r)` and `getnameinfo` (PTR of an IPv4 address), `res_query` and `res_search`
//! (any type; `res_search` applies no search list: names are asked as given). Numeric hosts and
//! names in /etc/hosts go to the real functions unchanged, as does everything in a VM, where
//! glibc's resolver reaches dns-cache through the image's loopback forwarder.

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ptr;

use libc::{addrinfo, c_char, c_int, hostent};
use shared_proto::outsource::{Datagram, UdpRequest};
use shared_proto::{ToGuest, ToHost};

use crate::dns::{self, Answer};
use crate::real;
use crate::transport::{recv_frame, recv_packet, Stream};

/// The guest DNS address when `OUTSOCK_DNS` is not set: the first address of dns-cache's
/// default destination pool, which host-server answers with dns-cache.
pub const DEFAULT_DNS: SocketAddrV4 = shared_proto::translate::DEFAULT_GUEST_DNS;

const TRIES: usize = 2;
const WAIT_MS: c_int = 2500;

/// Whether `name` is in /etc/hosts (then the real resolver answers it, with no network).
fn in_hosts_file(name: &str) -> bool {
    let Ok(text) = std::fs::read_to_string("/etc/hosts") else {
        return false;
    };
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .any(|l| {
            l.split_whitespace()
                .skip(1)
                .any(|n| n.eq_ignore_ascii_case(name))
        })
}

/// Whether this name is for the real resolver rather than dns-cache.
fn is_local_name(name: &str) -> bool {
    // In a VM glibc's resolver reaches dns-cache through the image's loopback forwarder.
    crate::transport::vsock_port().is_some()
        || name.parse::<Ipv4Addr>().is_ok()
        || name.parse::<std::net::Ipv6Addr>().is_ok()
        || in_hosts_file(name)
}

fn new_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    #[allow(clippy::cast_possible_truncation)] // Any 16 bits will do for a query id.
    let id = (nanos ^ std::process::id().rotate_left(16)) as u16;
    id
}

/// Sends one DNS query (with id `id`) to the guest DNS address through a host-server UDP
/// association and returns the answer that carries the same id; `None` when none came.
#[must_use]
pub fn exchange(id: u16, query: &[u8]) -> Option<Vec<u8>> {
    let stream = Stream::open().ok()?;
    let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    stream
        .send(&ToHost::Udp(UdpRequest {
            bind,
            channel: false,
        }))
        .ok()?;
    // A process's association is a packet channel passed with the answer (one frame each).
    let (stream, packets) = match stream.recv() {
        Ok((ToGuest::Associated { .. }, None)) => (stream, false),
        Ok((ToGuest::Associated { .. }, Some(p))) => (Stream::from_raw(p), true),
        _ => return None,
    };
    let server = crate::nameserver::guest_dns();
    for _ in 0..TRIES {
        let dg = ToHost::Datagram(Datagram {
            addr: server,
            payload: query.to_vec(),
        });
        stream.send(&dg).ok()?;
        let mut pfd = libc::pollfd {
            fd: stream.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, WAIT_MS) } <= 0 {
            continue;
        }
        let got = if packets {
            recv_packet(stream.fd(), 0).map(|m| (m, None))
        } else {
            recv_frame(stream.fd(), 0)
        };
        match got {
            Ok((ToGuest::Datagram(d), None)) if d.addr == server => {
                if dns::rcode(id, &d.payload).is_some() {
                    return Some(d.payload);
                }
            }
            _ => return None,
        }
    }
    None
}

/// Asks dns-cache for the A records of `name`.
#[must_use]
pub fn lookup_a(name: &str) -> Answer {
    let id = new_id();
    let Some(query) = dns::query_a(id, name) else {
        return Answer::NoName;
    };
    exchange(id, &query).map_or(Answer::Failed, |p| dns::parse_a(id, &p))
}

/// Asks dns-cache for the names of `a` (PTR).
fn lookup_ptr(a: Ipv4Addr) -> Result<Vec<String>, Answer> {
    let id = new_id();
    let query = dns::query(id, &dns::reverse_name(a), dns::TYPE_PTR, dns::CLASS_IN)
        .ok_or(Answer::NoName)?;
    let packet = exchange(id, &query).ok_or(Answer::Failed)?;
    dns::parse_ptr(id, &packet)
}

fn c_str<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null C strings handed to resolver functions are NUL-terminated.
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

/// `getaddrinfo(3)`: dummy IPv4 addresses from dns-cache for names the host cannot resolve
/// locally. Each address is expanded by the real getaddrinfo as a numeric host, so the result
/// list is glibc's own and glibc's `freeaddrinfo` frees it.
///
/// # Safety
/// Called by C with getaddrinfo(3)'s contract.
#[no_mangle]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    // SAFETY: hints is null or valid per the contract.
    let h = unsafe { hints.as_ref() };
    let family = h.map_or(libc::AF_UNSPEC, |h| h.ai_family);
    let numeric_only = h.is_some_and(|h| h.ai_flags & libc::AI_NUMERICHOST != 0);
    let name = c_str(node);
    let Some(name) =
        name.filter(|n| !numeric_only && family != libc::AF_INET6 && !is_local_name(n))
    else {
        // SAFETY: forwarded arguments.
        return unsafe { real::getaddrinfo(node, service, hints, res) };
    };
    let addrs = match lookup_a(name) {
        Answer::Addresses(a) => a,
        Answer::NoName | Answer::NoData => return libc::EAI_NONAME,
        Answer::Failed => return libc::EAI_AGAIN,
    };
    // SAFETY: a zeroed addrinfo is a valid "no hints" value.
    let mut numeric: addrinfo = h.copied().unwrap_or(unsafe { std::mem::zeroed() });
    numeric.ai_family = libc::AF_INET;
    // Numeric expansion; AI_ADDRCONFIG would drop IPv4 on a host with no IPv4 address, which
    // is exactly where we run.
    numeric.ai_flags =
        (numeric.ai_flags | libc::AI_NUMERICHOST) & !(libc::AI_ADDRCONFIG | libc::AI_CANONNAME);
    let mut head: *mut addrinfo = ptr::null_mut();
    let mut tail: *mut addrinfo = ptr::null_mut();
    for a in addrs {
        let Ok(text) = CString::new(a.to_string()) else {
            continue;
        };
        let mut part: *mut addrinfo = ptr::null_mut();
        // SAFETY: valid C strings and hints; `part` receives a list we now own.
        let rc = unsafe { real::getaddrinfo(text.as_ptr(), service, &numeric, &mut part) };
        if rc != 0 {
            if !head.is_null() {
                // SAFETY: a list from the real getaddrinfo.
                unsafe { libc::freeaddrinfo(head) };
            }
            return rc;
        }
        if head.is_null() {
            head = part;
        } else {
            // SAFETY: `tail` is the last node of our list; linking keeps every node owned once.
            unsafe { (*tail).ai_next = part };
        }
        tail = part;
        // SAFETY: walking a well-formed list to its end.
        unsafe {
            while !(*tail).ai_next.is_null() {
                tail = (*tail).ai_next;
            }
        }
    }
    if head.is_null() {
        return libc::EAI_NONAME;
    }
    if h.is_some_and(|h| h.ai_flags & libc::AI_CANONNAME != 0) {
        // The name as asked (ping prints it): the numeric expansion above had none. glibc's
        // freeaddrinfo frees it with free(), so it is strdup's.
        if let Ok(c) = CString::new(name) {
            // SAFETY: `head` is the first node of our list; strdup copies a valid C string.
            unsafe { (*head).ai_canonname = libc::strdup(c.as_ptr()) };
        }
    }
    // SAFETY: `res` is a valid out pointer per the contract.
    unsafe { *res = head };
    0
}

fn set_h_errno(v: c_int) {
    extern "C" {
        fn __h_errno_location() -> *mut c_int;
    }
    // SAFETY: glibc's per-thread h_errno slot.
    unsafe { *__h_errno_location() = v };
}

const HOST_NOT_FOUND: c_int = 1;
const TRY_AGAIN: c_int = 2;
const NO_DATA: c_int = 4;
const NO_RECOVERY: c_int = 3;
const NETDB_INTERNAL: c_int = -1;

fn h_errno_of(a: &Answer) -> c_int {
    match a {
        Answer::NoName => HOST_NOT_FOUND,
        Answer::NoData | Answer::Addresses(_) => NO_DATA,
        Answer::Failed => TRY_AGAIN,
    }
}

/// A host entry: its name and IPv4 addresses.
struct Host {
    name: String,
    addrs: Vec<[u8; 4]>,
}

/// Lays `host` out in `buf` (addresses, the address pointer list, an empty alias list, the
/// name) and points `ret` into it, as the `_r` functions must. `Err(ERANGE)` when too small.
///
/// # Safety
/// `ret` is valid for writing and `buf` for `buflen` bytes.
unsafe fn fill_hostent(
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: usize,
    host: &Host,
) -> Result<(), c_int> {
    let ptr_size = std::mem::size_of::<*mut c_char>();
    let addr_bytes = host.addrs.len() * 4;
    let ptrs_at = addr_bytes.next_multiple_of(ptr_size);
    let aliases_at = ptrs_at + (host.addrs.len() + 1) * ptr_size;
    let name_at = aliases_at + ptr_size;
    let need = name_at + host.name.len() + 1;
    // The pointer arrays need pointer alignment: start at the first aligned byte of `buf`.
    let skew = buf.align_offset(ptr_size);
    if buf.is_null() || buflen < need + skew {
        return Err(libc::ERANGE);
    }
    // SAFETY: every write below stays inside `buf[skew..skew + need]`, checked above, and the
    // pointer arrays are aligned by `skew` and `ptrs_at`.
    unsafe {
        let base = buf.add(skew).cast::<u8>();
        for (i, a) in host.addrs.iter().enumerate() {
            std::ptr::copy_nonoverlapping(a.as_ptr(), base.add(i * 4), 4);
        }
        let ptrs = base.add(ptrs_at).cast::<*mut c_char>();
        for i in 0..host.addrs.len() {
            *ptrs.add(i) = base.add(i * 4).cast::<c_char>();
        }
        *ptrs.add(host.addrs.len()) = ptr::null_mut();
        let aliases = base.add(aliases_at).cast::<*mut c_char>();
        *aliases = ptr::null_mut();
        let name = base.add(name_at);
        std::ptr::copy_nonoverlapping(host.name.as_ptr(), name, host.name.len());
        *name.add(host.name.len()) = 0;
        (*ret).h_name = name.cast::<c_char>();
        (*ret).h_aliases = aliases;
        (*ret).h_addrtype = libc::AF_INET;
        (*ret).h_length = 4;
        (*ret).h_addr_list = ptrs;
    }
    Ok(())
}

/// The per-thread storage the non-reentrant functions return a pointer into, like glibc's
/// static buffers.
struct HostBuf {
    ent: hostent,
    buf: Vec<u64>,
}

thread_local! {
    static HOST: RefCell<Option<Box<HostBuf>>> = const { RefCell::new(None) };
}

/// Fills this thread's buffer with `host` and returns the entry, valid until the next call.
fn static_hostent(host: &Host) -> *mut hostent {
    HOST.with(|cell| {
        let words = (host.addrs.len() * 16 + host.name.len() + 64) / 8;
        let mut b = Box::new(HostBuf {
            // SAFETY: a zeroed hostent is plain data, filled in below.
            ent: unsafe { std::mem::zeroed() },
            buf: vec![0u64; words],
        });
        let len = b.buf.len() * 8;
        let buf = b.buf.as_mut_ptr().cast::<c_char>();
        let ent: *mut hostent = &mut b.ent;
        // SAFETY: `ent` and `buf` (len bytes) live in the box, kept in the thread-local below;
        // the box's heap address is stable.
        if unsafe { fill_hostent(ent, buf, len, host) }.is_err() {
            return ptr::null_mut();
        }
        *cell.borrow_mut() = Some(b);
        ent
    })
}

/// Resolves `name` to a host entry through dns-cache, or the h_errno value to report.
fn resolve_host(name: &str) -> Result<Host, c_int> {
    match lookup_a(name) {
        Answer::Addresses(a) => Ok(Host {
            name: name.to_owned(),
            addrs: a.iter().map(Ipv4Addr::octets).collect(),
        }),
        other => Err(h_errno_of(&other)),
    }
}

/// The host entry for the address `a` (PTR through dns-cache), or the h_errno value to report.
fn reverse_host(a: Ipv4Addr) -> Result<Host, c_int> {
    match lookup_ptr(a) {
        Ok(names) => Ok(Host {
            name: names[0].clone(),
            addrs: vec![a.octets()],
        }),
        Err(e) => Err(h_errno_of(&e)),
    }
}

/// Whether a forward lookup of `name` is ours to answer.
fn ours(name: *const c_char) -> Option<&'static str> {
    c_str(name).filter(|n| !is_local_name(n))
}

/// `gethostbyname(3)`, used by netcat-traditional and other old programs.
///
/// # Safety
/// Called by C with gethostbyname(3)'s contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    let Some(n) = ours(name) else {
        // SAFETY: forwarded argument.
        return unsafe { real::gethostbyname(name) };
    };
    match resolve_host(n) {
        Ok(h) => static_hostent(&h),
        Err(e) => {
            set_h_errno(e);
            ptr::null_mut()
        }
    }
}

/// `gethostbyname2(3)`: AF_INET as `gethostbyname`, other families to libc.
///
/// # Safety
/// Called by C with gethostbyname2(3)'s contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent {
    if af == libc::AF_INET {
        // SAFETY: same contract.
        return unsafe { gethostbyname(name) };
    }
    // SAFETY: forwarded arguments.
    unsafe { real::gethostbyname2(name, af) }
}

/// The `_r` functions' common ending: `0` with `*result` set, or an errno with `*result` null.
///
/// # Safety
/// The pointers are the caller's, valid per the `_r` contract.
unsafe fn finish_r(
    host: Result<Host, c_int>,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: usize,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    // SAFETY: per this function's contract.
    unsafe {
        *result = ptr::null_mut();
        match host {
            Ok(h) => match fill_hostent(ret, buf, buflen, &h) {
                Ok(()) => {
                    *result = ret;
                    0
                }
                Err(e) => {
                    if !h_errnop.is_null() {
                        *h_errnop = NETDB_INTERNAL;
                    }
                    e
                }
            },
            Err(h) => {
                if !h_errnop.is_null() {
                    *h_errnop = h;
                }
                if h == TRY_AGAIN {
                    libc::EAGAIN
                } else {
                    libc::ENOENT
                }
            }
        }
    }
}

/// `gethostbyname_r(3)`.
///
/// # Safety
/// Called by C with gethostbyname_r(3)'s contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname_r(
    name: *const c_char,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: usize,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    let Some(n) = ours(name) else {
        // SAFETY: forwarded arguments.
        return unsafe { real::gethostbyname_r(name, ret, buf, buflen, result, h_errnop) };
    };
    // SAFETY: the caller's pointers, per the contract.
    unsafe { finish_r(resolve_host(n), ret, buf, buflen, result, h_errnop) }
}

/// `gethostbyname2_r(3)`: AF_INET as `gethostbyname_r`, other families to libc.
///
/// # Safety
/// Called by C with gethostbyname2_r(3)'s contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: usize,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    if af == libc::AF_INET {
        // SAFETY: same contract.
        return unsafe { gethostbyname_r(name, ret, buf, buflen, result, h_errnop) };
    }
    // SAFETY: forwarded arguments.
    unsafe { real::gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop) }
}

/// The IPv4 address in a `gethostbyaddr`-style argument triple, if it is one.
///
/// # Safety
/// `addr` is null or valid for `len` bytes.
unsafe fn addr_v4(addr: *const libc::c_void, len: libc::socklen_t, ty: c_int) -> Option<Ipv4Addr> {
    (ty == libc::AF_INET && len == 4 && !addr.is_null()).then(|| {
        // SAFETY: 4 readable bytes per the contract.
        let b: [u8; 4] = unsafe { std::ptr::read_unaligned(addr.cast()) };
        Ipv4Addr::from(b)
    })
}

/// The IPv4 address a reverse lookup is ours to answer, if it is.
fn reverse_ours(a: Ipv4Addr) -> Option<Ipv4Addr> {
    (crate::transport::vsock_port().is_none() && !a.is_loopback() && !a.is_unspecified())
        .then_some(a)
}

/// `gethostbyaddr(3)`: names of IPv4 addresses from dns-cache (a dummy's names, or the PTR it
/// forwards); other families and loopback to libc.
///
/// # Safety
/// Called by C with gethostbyaddr(3)'s contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyaddr(
    addr: *const libc::c_void,
    len: libc::socklen_t,
    ty: c_int,
) -> *mut hostent {
    // SAFETY: the caller's address of `len` bytes.
    let Some(a) = unsafe { addr_v4(addr, len, ty) }.and_then(reverse_ours) else {
        // SAFETY: forwarded arguments.
        return unsafe { real::gethostbyaddr(addr, len, ty) };
    };
    match reverse_host(a) {
        Ok(h) => static_hostent(&h),
        Err(e) => {
            set_h_errno(e);
            ptr::null_mut()
        }
    }
}

/// `gethostbyaddr_r(3)` (python's `socket.gethostbyaddr` uses it).
///
/// # Safety
/// Called by C with gethostbyaddr_r(3)'s contract.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // libc's signature.
pub unsafe extern "C" fn gethostbyaddr_r(
    addr: *const libc::c_void,
    len: libc::socklen_t,
    ty: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: usize,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    // SAFETY: the caller's address of `len` bytes.
    let Some(a) = unsafe { addr_v4(addr, len, ty) }.and_then(reverse_ours) else {
        // SAFETY: forwarded arguments.
        return unsafe { real::gethostbyaddr_r(addr, len, ty, ret, buf, buflen, result, h_errnop) };
    };
    // SAFETY: the caller's pointers, per the contract.
    unsafe { finish_r(reverse_host(a), ret, buf, buflen, result, h_errnop) }
}

/// `getnameinfo(3)`: the host part of an IPv4 address from dns-cache's PTR answer; the service
/// part, numeric forms and other families from libc.
///
/// # Safety
/// Called by C with getnameinfo(3)'s contract.
#[no_mangle]
pub unsafe extern "C" fn getnameinfo(
    sa: *const libc::sockaddr,
    salen: libc::socklen_t,
    host: *mut c_char,
    hostlen: libc::socklen_t,
    serv: *mut c_char,
    servlen: libc::socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's sockaddr of `salen` bytes.
    let v4 = unsafe { crate::sockaddr::read_v4(sa, salen) };
    let wanted = !host.is_null() && hostlen > 0 && flags & libc::NI_NUMERICHOST == 0;
    let Some(a) = v4.filter(|_| wanted).and_then(|a| reverse_ours(*a.ip())) else {
        // SAFETY: forwarded arguments.
        return unsafe { real::getnameinfo(sa, salen, host, hostlen, serv, servlen, flags) };
    };
    // The numeric host and the service, as libc would write them.
    // SAFETY: forwarded arguments with NI_NUMERICHOST added.
    let rc = unsafe {
        real::getnameinfo(
            sa,
            salen,
            host,
            hostlen,
            serv,
            servlen,
            flags | libc::NI_NUMERICHOST,
        )
    };
    if rc != 0 {
        return rc;
    }
    match lookup_ptr(a) {
        Ok(names) => {
            let mut name = names[0].as_str();
            if flags & libc::NI_NOFQDN != 0 {
                name = name.split('.').next().unwrap_or(name);
            }
            if name.len() >= hostlen as usize {
                return libc::EAI_OVERFLOW;
            }
            // SAFETY: `host` has `hostlen` > name.len() bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(name.as_ptr(), host.cast::<u8>(), name.len());
                *host.add(name.len()) = 0;
            }
            0
        }
        Err(_) if flags & libc::NI_NAMEREQD != 0 => libc::EAI_NONAME,
        // No name: the numeric form already written is the answer, as in libc.
        Err(_) => 0,
    }
}

/// The common body of `res_query` and `res_search`: one query through dns-cache, the raw answer
/// copied to `answer`. Returns its length, or -1 with h_errno set.
///
/// # Safety
/// `answer` is valid for `anslen` bytes.
unsafe fn res_common(name: &str, class: c_int, ty: c_int, answer: *mut u8, anslen: c_int) -> c_int {
    let (Ok(class), Ok(ty)) = (u16::try_from(class), u16::try_from(ty)) else {
        set_h_errno(NO_RECOVERY);
        return -1;
    };
    let id = new_id();
    let Some(query) = dns::query(id, name, ty, class) else {
        set_h_errno(HOST_NOT_FOUND);
        return -1;
    };
    let Some(packet) = exchange(id, &query) else {
        set_h_errno(TRY_AGAIN);
        return -1;
    };
    match dns::rcode(id, &packet) {
        Some(0) => {}
        Some(3) => {
            set_h_errno(HOST_NOT_FOUND);
            return -1;
        }
        _ => {
            set_h_errno(TRY_AGAIN);
            return -1;
        }
    }
    if packet.get(6..8) == Some(&[0, 0]) {
        set_h_errno(NO_DATA);
        return -1;
    }
    let n = packet.len().min(usize::try_from(anslen).unwrap_or(0));
    if answer.is_null() {
        return -1;
    }
    // SAFETY: `answer` holds `anslen` ≥ n bytes per the contract.
    unsafe { std::ptr::copy_nonoverlapping(packet.as_ptr(), answer, n) };
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

/// Defines a `res_*` entry point and its `__res_*` alias (the name `<resolv.h>` really calls):
/// outside a VM, the query goes to dns-cache; in a VM, to libc.
macro_rules! res_entry {
    ($(#[$doc:meta])* $name:ident, $alias:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Called by C with the function's contract (`dname` a C string, `answer` valid for
        /// `anslen` bytes).
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dname: *const c_char,
            class: c_int,
            ty: c_int,
            answer: *mut u8,
            anslen: c_int,
        ) -> c_int {
            match c_str(dname).filter(|_| crate::transport::vsock_port().is_none()) {
                // SAFETY: the caller's answer buffer.
                Some(n) => unsafe { res_common(n, class, ty, answer, anslen) },
                // SAFETY: forwarded arguments.
                None => unsafe { real::$name(dname, class, ty, answer, anslen) },
            }
        }

        /// The `<resolv.h>` name of the function above.
        ///
        /// # Safety
        /// As the function above.
        #[no_mangle]
        pub unsafe extern "C" fn $alias(
            dname: *const c_char,
            class: c_int,
            ty: c_int,
            answer: *mut u8,
            anslen: c_int,
        ) -> c_int {
            // SAFETY: same contract.
            unsafe { $name(dname, class, ty, answer, anslen) }
        }
    };
}

res_entry!(
    /// `res_query(3)`: one query of any type through dns-cache.
    res_query,
    __res_query
);
res_entry!(
    /// `res_search(3)`: as `res_query`; the name is asked as given (there is no search list to
    /// apply to an IPv6-only host's dummy names).
    res_search,
    __res_search
);
