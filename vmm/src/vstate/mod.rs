//! KVM state: the VM, its vCPUs, and what the vCPUs do on each exit.

pub mod exits;
pub mod msrs;
pub mod vcpu;
pub mod vcpu_thread;
pub mod vm;
