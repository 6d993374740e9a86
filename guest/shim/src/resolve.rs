//! Name resolution in process mode. glibc's resolver makes its socket calls inside libc, where
//! no preloaded library sees them (DESIGN.md §7), so the shim answers the resolver API itself:
//! it sends an A query to the guest DNS address through a host-server UDP association, and
//! dns-cache answers with dummy IPv4 addresses. Numeric hosts and names in /etc/hosts go to the
//! real functions unchanged.

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ptr;

use libc::{addrinfo, c_char, c_int, hostent};
use shared_proto::outsource::{Datagram, UdpRequest};
use shared_proto::{ToGuest, ToHost};

use crate::dns::{self, Answer};
use crate::real;
use crate::transport::{recv_frame, Stream};

/// The guest DNS address when `OUTSOCK_DNS` is not set: the first address of dns-cache's
/// default destination pool, which host-server answers with dns-cache.
pub const DEFAULT_DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 170, 160, 1), 53);

const TRIES: usize = 2;
const WAIT_MS: c_int = 2500;

fn dns_server() -> SocketAddrV4 {
    std::env::var("OUTSOCK_DNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_DNS)
}

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

/// Asks dns-cache for the A records of `name`.
#[must_use]
pub fn lookup_a(name: &str) -> Answer {
    let Some(seed) = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
    else {
        return Answer::Failed;
    };
    #[allow(clippy::cast_possible_truncation)] // Any 16 bits will do for a query id.
    let id = (seed.subsec_nanos() ^ std::process::id()) as u16;
    let Some(query) = dns::query_a(id, name) else {
        return Answer::NoName;
    };
    let Ok(stream) = Stream::open() else {
        return Answer::Failed;
    };
    let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    if stream.send(&ToHost::Udp(UdpRequest { bind })).is_err() {
        return Answer::Failed;
    }
    match stream.recv() {
        Ok((ToGuest::Associated { .. }, None)) => {}
        _ => return Answer::Failed,
    }
    let server = dns_server();
    for _ in 0..TRIES {
        let dg = ToHost::Datagram(Datagram {
            addr: server,
            payload: query.clone(),
        });
        if stream.send(&dg).is_err() {
            return Answer::Failed;
        }
        let mut pfd = libc::pollfd {
            fd: stream.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, WAIT_MS) } <= 0 {
            continue;
        }
        match recv_frame(stream.fd(), 0) {
            Ok((ToGuest::Datagram(d), None)) if d.addr == server => {
                let a = dns::parse_a(id, &d.payload);
                if a != Answer::Failed {
                    return a;
                }
            }
            _ => return Answer::Failed,
        }
    }
    Answer::Failed
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
    // SAFETY: `res` is a valid out pointer per the contract.
    unsafe { *res = head };
    0
}

/// The per-thread storage `gethostbyname` returns a pointer into, like glibc's static buffer.
struct HostBuf {
    name: CString,
    addrs: Vec<[u8; 4]>,
    addr_ptrs: Vec<*mut c_char>,
    aliases: [*mut c_char; 1],
    ent: hostent,
}

thread_local! {
    static HOST: RefCell<Option<Box<HostBuf>>> = const { RefCell::new(None) };
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

/// `gethostbyname(3)`, used by netcat-traditional and other old programs.
///
/// # Safety
/// Called by C with gethostbyname(3)'s contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    let Some(n) = c_str(name).filter(|n| !is_local_name(n)) else {
        // SAFETY: forwarded argument.
        return unsafe { real_gethostbyname(name) };
    };
    let addrs = match lookup_a(n) {
        Answer::Addresses(a) => a,
        Answer::NoName => {
            set_h_errno(HOST_NOT_FOUND);
            return ptr::null_mut();
        }
        Answer::NoData => {
            set_h_errno(NO_DATA);
            return ptr::null_mut();
        }
        Answer::Failed => {
            set_h_errno(TRY_AGAIN);
            return ptr::null_mut();
        }
    };
    let Ok(cname) = CString::new(n) else {
        return ptr::null_mut();
    };
    HOST.with(|cell| {
        let mut b = Box::new(HostBuf {
            name: cname,
            addrs: addrs.iter().map(Ipv4Addr::octets).collect(),
            addr_ptrs: Vec::new(),
            aliases: [ptr::null_mut()],
            // SAFETY: a zeroed hostent is plain data, filled in below.
            ent: unsafe { std::mem::zeroed() },
        });
        let ptrs: Vec<*mut c_char> = b
            .addrs
            .iter_mut()
            .map(|a| a.as_mut_ptr().cast::<c_char>())
            .chain([ptr::null_mut()])
            .collect();
        b.addr_ptrs = ptrs;
        b.ent.h_name = b.name.as_ptr().cast_mut();
        b.ent.h_aliases = b.aliases.as_mut_ptr();
        b.ent.h_addrtype = libc::AF_INET;
        b.ent.h_length = 4;
        b.ent.h_addr_list = b.addr_ptrs.as_mut_ptr();
        let p: *mut hostent = &mut b.ent;
        // The box's heap address is stable, so `p` stays valid until this thread's next call.
        *cell.borrow_mut() = Some(b);
        p
    })
}

unsafe fn real_gethostbyname(name: *const c_char) -> *mut hostent {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let mut f = SLOT.load(Ordering::Relaxed);
    if f == 0 {
        // SAFETY: dlsym with a NUL-terminated literal.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"gethostbyname".as_ptr()) } as usize;
        if f == 0 {
            set_h_errno(TRY_AGAIN);
            return ptr::null_mut();
        }
        SLOT.store(f, Ordering::Relaxed);
    }
    // SAFETY: libc's gethostbyname has this signature.
    let f: unsafe extern "C" fn(*const c_char) -> *mut hostent = unsafe { std::mem::transmute(f) };
    // SAFETY: forwarded argument.
    unsafe { f(name) }
}
