//! `outsock vm ls`: which VMs host-server is configured for, and which of them run.
//!
//! A [`ToHost::ListVms`](shared_proto::ToHost::ListVms) request is answered with one
//! [`VmList`] frame: every `[vms.NAME]`, whether a VMM accepts a connection on its socket right
//! now (and that VMM's pid, from SO_PEERCRED of the probe), the CID of its latest hello, and the
//! sockets and listeners it holds here. Only root and host-server's own user may ask: a guest's
//! stream (any VM identity) and other process-mode users get `Failed(EACCES)`, since the list
//! names other tenants. The probes run one after another, each bounded by [`PROBE_TIMEOUT`]; a probe
//! connects and closes without a `CONNECT` line, which the VMM's muxer drops as an
//! abandoned handshake.

use std::time::Duration;

use shared_proto::outsource::{VmList, VmStatus};
use shared_proto::Errno;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

#[cfg(test)]
use crate::context::Cids;
use crate::context::{Request, Shared};
use crate::identity::Identity;
use crate::limits::Resource;

/// How long one VM socket may take to accept the probe.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether `identity` may list the VMs: root or host-server's own user, in process mode.
fn may_list(identity: &Identity) -> bool {
    match identity {
        Identity::Process { uid } => *uid == 0 || *uid == rustix::process::geteuid().as_raw(),
        Identity::Vm(_) => false,
    }
}

/// Whether a VMM answers on `socket`, and its pid.
async fn probe(socket: &std::path::Path) -> (bool, u32) {
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(socket)).await {
        Ok(Ok(s)) => {
            let pid = s
                .peer_cred()
                .ok()
                .and_then(|c| c.pid())
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0);
            (true, pid)
        }
        _ => (false, 0),
    }
}

/// Answers a `ListVms` request (see the module documentation).
pub(crate) async fn list(req: Request, shared: &Shared) {
    if !may_list(&req.identity) {
        req.refuse(Errno::EACCES).await;
        return;
    }
    let mut list = VmList::default();
    for (name, vm) in &shared.settings.vms {
        let (running, vmm_pid) = probe(&vm.socket).await;
        let id = Identity::Vm(name.clone());
        list.0.push(VmStatus {
            name: name.clone(),
            address: vm.address,
            socket: vm.socket.display().to_string(),
            running,
            vmm_pid,
            cid: shared.vm_cids.get(name),
            sockets: shared.limits.used(&id, Resource::Socket),
            listeners: shared.limits.used(&id, Resource::Listener),
        });
    }
    let Request { mut stream, .. } = req;
    match shared_proto::to_vec(&list) {
        Ok(bytes) => {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode the VM list"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_and_our_user_may_list() {
        assert!(may_list(&Identity::Process { uid: 0 }));
        let me = rustix::process::geteuid().as_raw();
        assert!(may_list(&Identity::Process { uid: me }));
        assert!(!may_list(&Identity::Process { uid: 4242 }) || me == 4242);
        assert!(!may_list(&Identity::Vm("vm0".into())));
    }

    #[test]
    fn cids_follow_the_latest_hello() {
        let c = Cids::default();
        assert_eq!(c.get("vm0"), 0);
        c.saw("vm0", 3);
        c.saw("vm1", 4);
        c.saw("vm0", 5);
        assert_eq!((c.get("vm0"), c.get("vm1")), (5, 4));
    }
}
