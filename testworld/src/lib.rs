//! testworld: the small IPv6-only internet every end-to-end test of outsock runs in
//! (DESIGN.md §9).
//!
//! ```text
//!   legacy ns            host ns                          world ns
//!   (lo only,            (IPv6 only, no IPv4 route;       (IPv6 only)
//!    no routes)           outsock's daemons run here)
//!                        h0 fd00:64::1/64  ── veth ──  w0 fd00:64::2/64 + service addresses
//!                                                        dnsmasq [fd00:64::53]:53 (zone outsock.test)
//!                                                        TCP+UDP echo :7, HTTP :80 on every address
//! ```
//!
//! Legacy programs run in `legacy`, where a missed interception fails with ENETUNREACH instead
//! of sending a packet anywhere; they reach outsock through Unix sockets, whose paths cross
//! namespaces. Namespaces are named `osw<pid>x<n>-<role>`, so parallel tests never collide, and
//! a later run deletes the leftovers of a crashed one. All traffic stays inside namespaces this
//! crate created.

#![deny(unsafe_code)]

mod cmd;
#[allow(unsafe_code)] // kill(2) of a daemon's process group
mod daemon;
#[allow(unsafe_code)] // setns(2) into a namespace, kill(2) of its holder
mod netns;
mod world;

pub mod addr;
pub mod programs;
pub mod record;
pub mod stack;
pub mod users;
pub mod zone;

pub use daemon::Daemon;
pub use netns::Netns;
pub use world::{big_file_byte, World, BIG_FILE_LEN, INDEX_BODY};

/// Whether end-to-end tests can run here; prints why not when they can't. The test world needs
/// root (namespaces), `ip`, `dnsmasq`, `dig` and `python3`.
///
/// With `OUTSOCK_E2E_REQUIRED=1` in the environment (as `.ci/run` sets it) a missing
/// prerequisite is a failure instead of a skip, so CI can never pass by skipping.
///
/// # Panics
/// When a prerequisite is missing and `OUTSOCK_E2E_REQUIRED=1`.
#[must_use]
pub fn skip_unless_root(test: &str) -> bool {
    match missing_prerequisite() {
        None => true,
        Some(why) if std::env::var("OUTSOCK_E2E_REQUIRED").as_deref() == Ok("1") => {
            panic!("{test}: {why}, and OUTSOCK_E2E_REQUIRED=1 forbids skipping")
        }
        Some(why) => {
            println!("SKIP {test}: {why}");
            false
        }
    }
}

#[allow(unsafe_code)] // geteuid(2)
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the test world needs root to create network namespaces".into());
    }
    for tool in ["ip", "dnsmasq", "dig", "python3"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            || std::path::Path::new("/usr/sbin").join(tool).is_file();
        if !found {
            return Some(format!("`{tool}` is not installed (.ci/run installs it)"));
        }
    }
    None
}
