//! Hiber: a virtual machine monitor on KVM whose job is to snapshot a running
//! Linux guest and bring it back, in the same process or in a new one.

pub mod api;
pub mod boot;
pub mod cpu;
pub mod vstate;
pub mod config;
pub mod console;
pub mod legacy;
pub mod machine;
pub mod controller;
pub mod persist;
pub mod cli;
pub mod timing;
pub mod inspect;
