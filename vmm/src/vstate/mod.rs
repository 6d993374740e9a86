//! The only module that talks to KVM (and the only one with `unsafe`): the VM file descriptor,
//! guest memory registration, and the vCPUs with their run loops.

pub mod memory;
pub mod vcpu;
pub mod vm;
