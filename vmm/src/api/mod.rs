//! Hiber's control API: HTTP/1.1 with JSON bodies on a Unix socket.
//!
//! Where Hiber has the same operation as Firecracker, it uses Firecracker's
//! path, method, body fields and status codes, so that Firecracker clients
//! work unchanged:
//!
//! | request                                  | success | operation               |
//! |------------------------------------------|---------|-------------------------|
//! | `GET /`                                  | 200     | instance information    |
//! | `GET /vm/config`                         | 200     | machine configuration   |
//! | `PATCH /vm {"state": "Paused"}`          | 204     | pause the vCPUs         |
//! | `PATCH /vm {"state": "Resumed"}`         | 204     | resume the vCPUs        |
//! | `PUT /snapshot/create`                   | 204     | write a full snapshot   |
//! | `PUT /snapshot/load`                     | 204     | restore a snapshot      |
//! | `PUT /boot-source`                       | 204     | kernel, initrd, cmdline |
//! | `GET /machine-config`                    | 200     | vCPUs and memory        |
//! | `PUT /machine-config`                    | 204     | set vCPUs and memory    |
//! | `PUT /drives/{drive_id}`                 | 204     | add or replace a drive  |
//! | `PUT /network-interfaces/{iface_id}`     | 204     | add or replace a NIC    |
//! | `PUT /vsock`                             | 204     | set the vsock device    |
//! | `PUT /entropy`                           | 204     | the entropy device      |
//! | `PUT /actions {"action_type": ...}`      | 204     | `InstanceStart` boots   |
//!
//! The pre-boot calls (`/boot-source` to `/entropy`) configure the guest of a
//! `hiber run --api-sock PATH` process started without `--kernel`, starting
//! from the values of its command line; `InstanceStart` boots it. A second
//! `PUT` of a drive or interface id replaces it; a root drive becomes the
//! first drive (vda) and adds `root=/dev/vda ro|rw` to the command line.
//! After `InstanceStart` or a snapshot load they answer 400, and a snapshot
//! load is refused once the guest has been configured. `PUT /snapshot/load`
//! takes Firecracker's `network_overrides` (each with an optional `guest_mac`,
//! Hiber's addition) and `vsock_override`.
//!
//! Every failure carries `{"fault_message": "..."}`. Status codes: 400 for a
//! malformed request, a body of the wrong shape, an unknown field or an
//! operation the VM's state does not allow; 404 for an unknown path; 405 (with
//! `Allow`) for a wrong method; 408 when a client stops sending mid-request;
//! 413 for a body over 64 KiB; 431 for a head over 8 KiB; 501 for chunked
//! bodies; 505 for HTTP versions other than 1.0 and 1.1; 500 when the VMM
//! fails or drops a request; 503 when the VMM is shutting down or too many
//! connections are open; 504 when the VMM does not answer within the reply
//! timeout (the operation may still complete).
//!
//! Flow: [`ApiServer`] accepts connections on its own thread and serves each
//! on a thread of its own. A well-formed request becomes an [`ApiCall`] sent
//! over a channel to the VMM thread, whose event loop is woken through an
//! eventfd; the VMM answers on the call's reply channel with an
//! [`ApiResponse`].
//!
//! # Limitations
//!
//! - Only `Content-Length` bodies; chunked request bodies are refused (501).
//! - Only full snapshots with a file memory backend: `"Diff"` snapshots, dirty
//!   page tracking and the `"Uffd"` backend are refused with 400.
//! - Of the pre-boot settings, these are refused with 400 and a message that
//!   says so: `smt`, `track_dirty_pages`, CPU templates, huge pages, rate
//!   limiters, `partuuid`, vhost-user drives (`socket`), `io_engine` `Async`
//!   and `mtu`. `cache_type` may be `Unsafe` or `Writeback`: Hiber honours
//!   every flush either way.
//! - Actions: `SendCtrlAltDel` is refused (Hiber's i8042 has no keyboard;
//!   `reboot` in the guest ends Hiber) and so is `FlushMetrics` (no metrics).
//! - Not served: `PATCH /machine-config`, `PATCH /drives/...` and
//!   `PATCH /network-interfaces/...`, `/balloon`, `/cpu-config`, `/logger`,
//!   `/metrics`, `/mmds`, `/pmem`, `/serial`, `/memory-hotplug`.
//! - After [`ApiServer::shutdown`], connections that are open finish their
//!   current request; an idle one lingers until its idle timeout or until
//!   the process exits.

pub mod client;
mod connection;
#[cfg(test)]
mod end_to_end;
pub mod http;
pub mod info;
mod preboot_routes;
pub mod routes;
pub mod server;
#[cfg(test)]
pub(crate) mod test_dir;

pub use client::{request, ClientError};
pub use info::{InstanceInfo, VmRunState};
pub use routes::{ApiRequest, CreateSnapshotParams, LoadSnapshotParams, MemBackendKind};
pub use server::{ApiCall, ApiResponse, ApiServer, ServerError, ServerOptions};

/// The JSON body of every failed request: `{"fault_message": message}`.
pub fn fault_body(message: &str) -> serde_json::Value {
    serde_json::json!({ "fault_message": message })
}

/// An error's message followed by those of its sources, joined by ": ".
///
/// Errors keep their cause out of their own message; a client on the other
/// end of the socket needs the whole chain in one string.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
