//! The bodies of Firecracker's pre-boot calls and of the overrides of
//! `PUT /snapshot/load`, and what Hiber makes of them.
//!
//! Each body becomes a [`PrebootRequest`] or is refused with a 400 that
//! names the field and what to do instead. Settings Hiber does not have
//! (rate limiters, SMT, CPU templates, huge pages...) are refused rather
//! than ignored, so that a client never believes it got one. Whether files
//! and names are usable is checked later, by [`crate::preboot`].

use std::path::PathBuf;

use serde::Deserialize;

use super::routes::{decode, non_empty, ApiRequest, RouteError};
use crate::config::{DriveConfig, MacAddr, NetConfig, VsockConfig};
use crate::persist::NetOverride;
use crate::preboot::{BootSource, DriveSpec, MachineSize, PrebootRequest};

const BOOT_EXAMPLE: &str = r#"{"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"}"#;
const MACHINE_EXAMPLE: &str = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#;
const DRIVE_EXAMPLE: &str = concat!(
    r#"{"drive_id": "rootfs", "path_on_host": "rootfs.ext4", "#,
    r#""is_root_device": true, "is_read_only": false}"#
);
const NET_EXAMPLE: &str = r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#;
const VSOCK_EXAMPLE: &str = r#"{"guest_cid": 3, "uds_path": "vm.vsock"}"#;
const ACTION_EXAMPLE: &str = r#"{"action_type": "InstanceStart"}"#;

/// Body of `PUT /boot-source`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootSourceBody {
    kernel_image_path: PathBuf,
    boot_args: Option<String>,
    initrd_path: Option<PathBuf>,
}

/// Body of `PUT /machine-config`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineConfigBody {
    vcpu_count: u64,
    mem_size_mib: u64,
    #[serde(default)]
    smt: bool,
    #[serde(default)]
    track_dirty_pages: bool,
    cpu_template: Option<String>,
    huge_pages: Option<String>,
}

/// Body of `PUT /drives/{drive_id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DriveBody {
    drive_id: String,
    path_on_host: Option<PathBuf>,
    is_root_device: bool,
    is_read_only: Option<bool>,
    partuuid: Option<String>,
    /// Both strategies are accepted: Hiber passes every guest flush on.
    #[serde(rename = "cache_type")]
    _cache_type: Option<CacheType>,
    io_engine: Option<IoEngine>,
    rate_limiter: Option<RateLimiterBody>,
    socket: Option<PathBuf>,
}

/// Firecracker's caching strategies: both are safe in Hiber, which
/// honours every flush.
#[derive(Deserialize)]
enum CacheType {
    Unsafe,
    Writeback,
}

#[derive(Deserialize, PartialEq, Eq)]
enum IoEngine {
    Sync,
    Async,
}

/// A rate limiter; one without buckets limits nothing and is accepted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimiterBody {
    bandwidth: Option<serde_json::Value>,
    ops: Option<serde_json::Value>,
}

impl RateLimiterBody {
    fn limits(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }
}

/// Body of `PUT /network-interfaces/{iface_id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkBody {
    iface_id: String,
    host_dev_name: String,
    guest_mac: Option<String>,
    rx_rate_limiter: Option<RateLimiterBody>,
    tx_rate_limiter: Option<RateLimiterBody>,
    mtu: Option<u32>,
}

/// Body of `PUT /vsock`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VsockBody {
    guest_cid: u32,
    uds_path: PathBuf,
    /// Deprecated by Firecracker; accepted and unused.
    #[serde(rename = "vsock_id")]
    _vsock_id: Option<String>,
}

/// Body of `PUT /entropy`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntropyBody {
    rate_limiter: Option<RateLimiterBody>,
}

/// Body of `PUT /actions`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// One entry of `network_overrides` in `PUT /snapshot/load`; `guest_mac`
/// is Hiber's addition to Firecracker's fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NetworkOverrideBody {
    iface_id: String,
    host_dev_name: String,
    guest_mac: Option<String>,
}

impl NetworkOverrideBody {
    /// The override, with its MAC address parsed.
    pub(super) fn into_override(self) -> Result<NetOverride, RouteError> {
        let field = "network_overrides[].guest_mac";
        Ok(NetOverride {
            guest_mac: parse_mac(field, self.guest_mac.as_deref())?,
            iface_id: self.iface_id,
            host_dev_name: self.host_dev_name,
        })
    }
}

fn unsupported(what: impl Into<String>, why: &'static str) -> RouteError {
    RouteError::Unsupported {
        what: what.into(),
        why,
    }
}

fn parse_mac(field: &str, mac: Option<&str>) -> Result<Option<MacAddr>, RouteError> {
    mac.map(|m| {
        m.parse().map_err(|reason| RouteError::BadMac {
            field: field.to_string(),
            reason,
        })
    })
    .transpose()
}

fn same_id(field: &'static str, in_path: &str, in_body: String) -> Result<String, RouteError> {
    if in_path != in_body {
        let in_path = in_path.to_string();
        return Err(RouteError::IdMismatch {
            field,
            in_path,
            in_body,
        });
    }
    Ok(in_body)
}

/// `PUT /boot-source`.
pub(super) fn boot_source(body: &[u8]) -> Result<PrebootRequest, RouteError> {
    let body: BootSourceBody = decode("PUT /boot-source", BOOT_EXAMPLE, body)?;
    Ok(PrebootRequest::BootSource(BootSource {
        kernel: non_empty("kernel_image_path", body.kernel_image_path)?,
        initrd: match body.initrd_path {
            Some(p) => Some(non_empty("initrd_path", p)?),
            None => None,
        },
        boot_args: body.boot_args,
    }))
}

/// `PUT /machine-config`.
pub(super) fn machine_config(body: &[u8]) -> Result<PrebootRequest, RouteError> {
    let body: MachineConfigBody = decode("PUT /machine-config", MACHINE_EXAMPLE, body)?;
    if body.smt {
        let why = "Hiber gives each vCPU a core of its own; set smt to false or leave it out";
        return Err(unsupported("smt: true", why));
    }
    if body.track_dirty_pages {
        return Err(RouteError::DirtyTracking {
            field: "track_dirty_pages",
        });
    }
    if let Some(t) = body.cpu_template.filter(|t| t != "None") {
        let why = "Hiber has no CPU templates; it hides host CPU features itself (see \
                   `hiber host-check` and --cpu-hide); set \"None\" or leave it out";
        return Err(unsupported(format!("cpu_template \"{t}\""), why));
    }
    if let Some(h) = body.huge_pages.filter(|h| h != "None") {
        let why = "Hiber backs guest memory with 4 KiB pages; set \"None\" or leave it out";
        return Err(unsupported(format!("huge_pages \"{h}\""), why));
    }
    Ok(PrebootRequest::Machine(MachineSize {
        vcpu_count: body.vcpu_count,
        mem_size_mib: body.mem_size_mib,
    }))
}

/// `PUT /drives/{id}`.
pub(super) fn drive(id: &str, body: &[u8]) -> Result<PrebootRequest, RouteError> {
    let body: DriveBody = decode("PUT /drives/{drive_id}", DRIVE_EXAMPLE, body)?;
    let drive_id = same_id("drive_id", id, body.drive_id)?;
    if body.socket.is_some() {
        let why = "Hiber has no vhost-user drives; give path_on_host instead";
        return Err(unsupported("socket", why));
    }
    if body.partuuid.is_some() {
        let why = "Hiber boots from the root drive as /dev/vda; leave partuuid out";
        return Err(unsupported("partuuid", why));
    }
    if body
        .rate_limiter
        .as_ref()
        .is_some_and(RateLimiterBody::limits)
    {
        let why = "Hiber has no I/O rate limiters; leave rate_limiter out";
        return Err(unsupported("rate_limiter", why));
    }
    if body.io_engine == Some(IoEngine::Async) {
        let why = "Hiber's drives do synchronous I/O; use \"Sync\" or leave io_engine out";
        return Err(unsupported("io_engine \"Async\"", why));
    }
    let why = "give the raw image file the drive reads and writes";
    let path = body.path_on_host.ok_or(RouteError::Required {
        field: "path_on_host",
        why,
    })?;
    let why = "say whether the guest may write the drive (true or false)";
    let read_only = body.is_read_only.ok_or(RouteError::Required {
        field: "is_read_only",
        why,
    })?;
    Ok(PrebootRequest::Drive(DriveSpec {
        drive: DriveConfig {
            id: drive_id,
            path: non_empty("path_on_host", path)?,
            read_only,
        },
        is_root_device: body.is_root_device,
    }))
}

/// `PUT /network-interfaces/{id}`.
pub(super) fn network(id: &str, body: &[u8]) -> Result<PrebootRequest, RouteError> {
    let operation = "PUT /network-interfaces/{iface_id}";
    let body: NetworkBody = decode(operation, NET_EXAMPLE, body)?;
    let iface_id = same_id("iface_id", id, body.iface_id)?;
    for (field, limiter) in [
        ("rx_rate_limiter", &body.rx_rate_limiter),
        ("tx_rate_limiter", &body.tx_rate_limiter),
    ] {
        if limiter.as_ref().is_some_and(RateLimiterBody::limits) {
            let why = "Hiber has no network rate limiters; leave it out";
            return Err(unsupported(field, why));
        }
    }
    if body.mtu.is_some() {
        let why = "Hiber's network devices do not advertise an MTU; leave mtu out";
        return Err(unsupported("mtu", why));
    }
    Ok(PrebootRequest::Network(NetConfig {
        mac: parse_mac("guest_mac", body.guest_mac.as_deref())?,
        id: iface_id,
        tap: body.host_dev_name,
    }))
}

/// `PUT /vsock`.
pub(super) fn vsock(body: &[u8]) -> Result<PrebootRequest, RouteError> {
    let body: VsockBody = decode("PUT /vsock", VSOCK_EXAMPLE, body)?;
    Ok(PrebootRequest::Vsock(VsockConfig {
        guest_cid: body.guest_cid,
        uds_path: non_empty("uds_path", body.uds_path)?,
    }))
}

/// `PUT /entropy`.
pub(super) fn entropy(body: &[u8]) -> Result<PrebootRequest, RouteError> {
    let body: EntropyBody = decode("PUT /entropy", "{}", body)?;
    if body
        .rate_limiter
        .as_ref()
        .is_some_and(RateLimiterBody::limits)
    {
        let why = "Hiber's entropy device has no rate limiter; leave rate_limiter out";
        return Err(unsupported("rate_limiter", why));
    }
    Ok(PrebootRequest::Entropy)
}

/// `PUT /actions`.
pub(super) fn action(body: &[u8]) -> Result<ApiRequest, RouteError> {
    let body: ActionBody = decode("PUT /actions", ACTION_EXAMPLE, body)?;
    match body.action_type {
        ActionType::InstanceStart => Ok(ApiRequest::InstanceStart),
        ActionType::SendCtrlAltDel => Err(unsupported(
            "action_type \"SendCtrlAltDel\"",
            "Hiber's i8042 has no keyboard to send the keys through; run `reboot` or \
             `poweroff` in the guest, which ends Hiber with status 0",
        )),
        ActionType::FlushMetrics => Err(unsupported(
            "action_type \"FlushMetrics\"",
            "Hiber keeps no Firecracker metrics (there is no /metrics to flush to); \
             its log goes to standard error",
        )),
    }
}
