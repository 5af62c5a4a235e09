//! Hiber: a virtual machine monitor on KVM whose job is to snapshot a running
//! Linux guest and bring it back, in the same process or in a new one.

pub mod api;
pub mod boot;
pub mod cli;
pub mod config;
pub mod console;
pub mod controller;
pub mod cpu;
pub mod device_args;
pub mod inspect;
pub mod legacy;
pub mod machine;
pub mod persist;
pub mod preboot;
pub mod timing;
pub mod virtio;
pub mod vstate;
