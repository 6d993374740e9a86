//! Who is on the other end of a host.sock stream, and the rules for the frames that open it.
//!
//! How host-server knows a peer is a VMM: its SO_PEERCRED uid is the `vmm_uid` of a configured
//! VM (`[vms.NAME] vmm_uid`/`vmm_user`). The kernel fills SO_PEERCRED at connect time, so no peer
//! can forge it. A VMM peer must open every stream with exactly one hello naming a VM whose
//! `vmm_uid` is its own (the VMM writes it before any guest byte): each VMM runs as its own user
//! and can claim only its own VM. Every other peer is a process, identified by its uid (limits)
//! and pid (logs), and may not send a hello at all. A second hello, or a hello after the
//! request, is refused. Which peers may open a stream at all is decided before this, by
//! [`crate::config::Settings::may_use_host_socket`] (refused with EACCES).

use std::collections::BTreeMap;

use shared_proto::outsource::{ToHost, VmHello};
use shared_proto::Errno;
use thiserror::Error;

use crate::config::VmSettings;

/// The peer's credentials as the kernel recorded them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// Whose socket a stream carries: the unit that limits and listen addresses apply to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// A guest of the named VM (the hello's name, checked against the configuration).
    Vm(String),
    /// A process on the host, by uid: all processes of one user share one set of limits.
    Process { uid: u32 },
}

impl Identity {
    /// The VM's name, for a VM.
    #[must_use]
    pub fn vm_name(&self) -> Option<&str> {
        match self {
            Self::Vm(name) => Some(name),
            Self::Process { .. } => None,
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vm(name) => write!(f, "vm:{name}"),
            Self::Process { uid } => write!(f, "uid:{uid}"),
        }
    }
}

/// Why a stream's opening frames were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    #[error("peer uid {uid} is not a VMM and may not send a hello")]
    HelloFromProcess { uid: u32 },
    #[error("a second hello on one stream")]
    SecondHello,
    #[error("a VMM peer (uid {uid}) sent a request without a hello")]
    VmmWithoutHello { uid: u32 },
    #[error("hello names VM {0:?}, which is not configured")]
    UnknownVm(String),
    #[error("VMM uid {uid} may not claim VM {vm:?}: that VM's vmm_uid is another user")]
    NotItsVm { uid: u32, vm: String },
    #[error("the stream must open with a request, not a datagram or an end")]
    DataFirst,
}

impl IdentityError {
    /// The errno the peer is told before the stream closes.
    #[must_use]
    pub fn errno(&self) -> Errno {
        match self {
            Self::HelloFromProcess { .. }
            | Self::VmmWithoutHello { .. }
            | Self::UnknownVm(_)
            | Self::NotItsVm { .. } => Errno::EPERM,
            Self::SecondHello | Self::DataFirst => Errno::EPROTO,
        }
    }
}

/// The request that follows the opening, with the identity it was made under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub identity: Identity,
    pub hello: Option<VmHello>,
    pub request: ToHost,
}

/// The opening of one stream: feed it frames until it yields [`Opened`] or an error.
#[derive(Debug)]
pub struct Opening<'a> {
    cred: PeerCred,
    is_vmm: bool,
    vms: &'a BTreeMap<String, VmSettings>,
    hello: Option<VmHello>,
}

impl<'a> Opening<'a> {
    /// `vms` from the settings: a peer is a VMM when its uid is some VM's `vmm_uid`.
    #[must_use]
    pub fn new(cred: PeerCred, vms: &'a BTreeMap<String, VmSettings>) -> Self {
        Self {
            cred,
            is_vmm: vms.values().any(|v| v.vmm_uid == cred.uid),
            vms,
            hello: None,
        }
    }

    /// The opening of a kept stream's next request: the stream opened with `hello` (accepted
    /// then), so the request is made under it, and another hello is a second one.
    #[must_use]
    pub fn resumed(cred: PeerCred, vms: &'a BTreeMap<String, VmSettings>, hello: VmHello) -> Self {
        Self {
            hello: Some(hello),
            ..Self::new(cred, vms)
        }
    }

    /// Takes the next frame. `Ok(None)`: a hello was accepted, read the request next.
    ///
    /// # Errors
    /// [`IdentityError`] when the frame breaks the rules; the stream must then be closed.
    pub fn feed(&mut self, frame: ToHost) -> Result<Option<Opened>, IdentityError> {
        match frame {
            ToHost::Hello(h) => {
                if !self.is_vmm {
                    return Err(IdentityError::HelloFromProcess { uid: self.cred.uid });
                }
                if self.hello.is_some() {
                    return Err(IdentityError::SecondHello);
                }
                match self.vms.get(&h.vm) {
                    None => return Err(IdentityError::UnknownVm(h.vm)),
                    Some(vm) if vm.vmm_uid != self.cred.uid => {
                        return Err(IdentityError::NotItsVm {
                            uid: self.cred.uid,
                            vm: h.vm,
                        })
                    }
                    Some(_) => {}
                }
                self.hello = Some(h);
                Ok(None)
            }
            // An end belongs to a connection, and a stream that opens has none.
            ToHost::Datagram(_) | ToHost::Ended => Err(IdentityError::DataFirst),
            request => {
                let identity = match (&self.hello, self.is_vmm) {
                    (Some(h), _) => Identity::Vm(h.vm.clone()),
                    // A VMM's user (root, where VMMs run as root) may ask for the VM list
                    // without a hello: it asks as a user, for no guest, and gets no socket.
                    (None, true) if matches!(request, ToHost::ListVms) => {
                        Identity::Process { uid: self.cred.uid }
                    }
                    (None, true) => {
                        return Err(IdentityError::VmmWithoutHello { uid: self.cred.uid })
                    }
                    (None, false) => Identity::Process { uid: self.cred.uid },
                };
                Ok(Some(Opened {
                    identity,
                    hello: self.hello.take(),
                    request,
                }))
            }
        }
    }
}

/// A hello (or anything but a datagram) arriving after the request on a UDP stream.
#[must_use]
pub fn late_frame_error(frame: &ToHost) -> Option<IdentityError> {
    match frame {
        ToHost::Datagram(_) => None,
        ToHost::Hello(_) => Some(IdentityError::SecondHello),
        _ => Some(IdentityError::DataFirst),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::outsource::{ConnectRequest, Datagram};

    fn cred(uid: u32) -> PeerCred {
        PeerCred {
            uid,
            gid: uid,
            pid: Some(42),
        }
    }

    fn hello(vm: &str) -> ToHost {
        ToHost::Hello(VmHello {
            vm: vm.into(),
            cid: 3,
            port: 1024,
            takes_sockets: false,
        })
    }

    fn connect() -> ToHost {
        ToHost::Connect(ConnectRequest {
            dest: "10.170.160.2:80".parse().unwrap(),
            pass_fd: false,
            nonblocking: false,
        })
    }

    fn vms() -> BTreeMap<String, VmSettings> {
        BTreeMap::from([
            (
                "web".to_owned(),
                VmSettings::new(
                    "/run/outsock/vm-web.vsock",
                    "fd00:64::101".parse().unwrap(),
                    107,
                ),
            ),
            (
                "db".to_owned(),
                VmSettings::new(
                    "/run/outsock/vm-db.vsock",
                    "fd00:64::102".parse().unwrap(),
                    108,
                ),
            ),
        ])
    }

    #[test]
    fn process_is_identified_by_uid() {
        let vms = vms();
        let mut o = Opening::new(cred(1000), &vms);
        let opened = o.feed(connect()).unwrap().unwrap();
        assert_eq!(opened.identity, Identity::Process { uid: 1000 });
        assert_eq!(opened.hello, None);
    }

    #[test]
    fn vmm_names_the_vm() {
        let vms = vms();
        let mut o = Opening::new(cred(107), &vms);
        assert_eq!(o.feed(hello("web")), Ok(None));
        let opened = o.feed(connect()).unwrap().unwrap();
        assert_eq!(opened.identity, Identity::Vm("web".into()));
    }

    #[test]
    fn refusals() {
        let vms = vms();
        let mut o = Opening::new(cred(1000), &vms);
        let e = o.feed(hello("web")).unwrap_err();
        assert_eq!(e, IdentityError::HelloFromProcess { uid: 1000 });
        assert_eq!(e.errno(), Errno::EPERM);

        let mut o = Opening::new(cred(107), &vms);
        o.feed(hello("web")).unwrap();
        assert_eq!(o.feed(hello("web")), Err(IdentityError::SecondHello));

        let mut o = Opening::new(cred(107), &vms);
        assert_eq!(
            o.feed(hello("other")),
            Err(IdentityError::UnknownVm("other".into()))
        );

        let mut o = Opening::new(cred(107), &vms);
        assert_eq!(
            o.feed(connect()),
            Err(IdentityError::VmmWithoutHello { uid: 107 })
        );
        // ...but may ask for the VM list as a user; after a hello the list is asked by the
        // VM (its guest), which `vms` refuses.
        let mut o = Opening::new(cred(107), &vms);
        let opened = o.feed(ToHost::ListVms).unwrap().unwrap();
        assert_eq!(opened.identity, Identity::Process { uid: 107 });
        let mut o = Opening::new(cred(107), &vms);
        o.feed(hello("web")).unwrap();
        let opened = o.feed(ToHost::ListVms).unwrap().unwrap();
        assert_eq!(opened.identity, Identity::Vm("web".into()));

        // VMM of web (107) cannot claim db; db's own VMM (108) can.
        let mut o = Opening::new(cred(107), &vms);
        let e = o.feed(hello("db")).unwrap_err();
        assert_eq!(
            e,
            IdentityError::NotItsVm {
                uid: 107,
                vm: "db".into()
            }
        );
        assert_eq!(e.errno(), Errno::EPERM);
        let mut o = Opening::new(cred(108), &vms);
        assert_eq!(o.feed(hello("db")), Ok(None));

        let mut o = Opening::new(cred(1000), &vms);
        let d = ToHost::Datagram(Datagram {
            addr: "10.170.160.2:53".parse().unwrap(),
            payload: vec![1],
        });
        assert_eq!(o.feed(d.clone()), Err(IdentityError::DataFirst));
        assert_eq!(late_frame_error(&d), None);
        assert_eq!(
            late_frame_error(&hello("web")),
            Some(IdentityError::SecondHello)
        );
        assert_eq!(late_frame_error(&connect()), Some(IdentityError::DataFirst));
    }
}
