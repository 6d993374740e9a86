//! Which stream reaches host-server, chosen as liboutsock chooses (`guest/shim/src/transport.rs`):
//! `OUTSOCK_TRANSPORT` in the environment, else `transport=` in the guest image's settings
//! file, else a Unix stream to host-server's socket (process mode): the one rule,
//! `shared_proto::translate::choose_transport`. The value is `unix` or `vsock:<port>`.
//!
//! Inside a VM (`vsock:<port>`) each request is an `AF_VSOCK` stream to the host (CID 2) that
//! the VMM bridges to host-server; host-server cannot pass a descriptor over it, so a TCP
//! connect is relayed on that stream, which itself becomes the program's socket (as
//! liboutsock does in a VM). The guest's DNS is the forwarder on 127.0.0.1:53, a loopback
//! nameserver that every resolver reaches natively, so no nameserver is redirected there; and
//! listeners are vsock listeners of their own, as liboutsock's in a VM (`vmlisten`).

use shared_proto::translate::{choose_transport, GUEST_CONFIG_FILE};

pub use shared_proto::translate::HOST_CID;

/// The vsock port host-server is reached on in this process's setting, or `None` (Unix).
#[must_use]
pub fn vsock_port() -> Option<u32> {
    let env = std::env::var("OUTSOCK_TRANSPORT").ok();
    let config = std::fs::read_to_string(GUEST_CONFIG_FILE).ok();
    choose_transport(env.as_deref(), config.as_deref())
}
