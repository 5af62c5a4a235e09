//! Hiber: a virtual machine monitor on KVM whose job is to snapshot a running
//! Linux guest and bring it back, in the same process or in a new one.

pub mod api;
pub mod boot;
pub mod cpu;
