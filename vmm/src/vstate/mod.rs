//! The only module that talks to KVM: the VM file descriptor, guest memory registration, and
//! the vCPUs with their run loops. One of the three places allowed `unsafe` (see the crate
//! root): registering a memory slot and reading the `kvm_run` union; the others are
//! `signals` and `seccomp`, which touch no KVM.

pub mod memory;
pub mod vcpu;
pub mod vm;
