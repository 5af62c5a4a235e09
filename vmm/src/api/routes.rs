//! Maps an HTTP method, path and JSON body onto a typed [`ApiRequest`].
//!
//! Paths, methods and body fields follow Firecracker's API wherever Hiber
//! offers the same operation, so that its clients work unchanged. Bodies are
//! strict: an unknown field is refused with a message that names it.

use std::path::PathBuf;

use serde::Deserialize;

use super::preboot_routes as preboot;
use crate::persist::{DriveOverride, NetOverride};
use crate::preboot::PrebootRequest;

/// An operation asked of the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /`: the instance's id, state and version.
    GetInfo,
    /// `GET /vm/config`: the machine configuration.
    GetVmConfig,
    /// `PATCH /vm {"state": "Paused"}`.
    Pause,
    /// `PATCH /vm {"state": "Resumed"}`.
    Resume,
    /// `PUT /snapshot/create`.
    CreateSnapshot(CreateSnapshotParams),
    /// `PUT /snapshot/load`.
    LoadSnapshot(LoadSnapshotParams),
    /// `GET /machine-config`: vCPUs and memory, configured or running.
    GetMachineConfig,
    /// A pre-boot `PUT`: boot source, machine size or a device.
    Configure(PrebootRequest),
    /// `PUT /actions {"action_type": "InstanceStart"}`.
    InstanceStart,
}

/// Where to write a full snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSnapshotParams {
    /// The file for the VM state (vCPUs, devices, interrupt controllers, clocks).
    pub snapshot_path: PathBuf,
    /// The file for guest memory.
    pub mem_file_path: PathBuf,
}

/// Where guest memory comes from when a snapshot is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemBackendKind {
    /// Guest memory is read from (or mapped from) a regular file.
    File,
}

/// Which snapshot to load and what to do after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSnapshotParams {
    /// The file holding the VM state.
    pub snapshot_path: PathBuf,
    /// The file holding guest memory.
    pub mem_file_path: PathBuf,
    /// How guest memory is provided.
    pub mem_backend: MemBackendKind,
    /// Whether to resume the VM once loaded (otherwise it stays paused).
    pub resume_vm: bool,
    /// New host TAPs (and MAC addresses) for the snapshot's interfaces.
    pub network_overrides: Vec<NetOverride>,
    /// A new host socket path for the snapshot's vsock device.
    pub vsock_override: Option<PathBuf>,
    /// New image files for the snapshot's drives (Hiber's addition).
    pub drive_overrides: Vec<DriveOverride>,
}

/// Why a request does not name a valid operation.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No resource at this path.
    #[error(
        "there is no API resource at {path:?}: the API serves /, /vm, /vm/config, \
         /snapshot/create, /snapshot/load, /boot-source, /machine-config, /drives/ID, \
         /network-interfaces/ID, /vsock, /entropy and /actions"
    )]
    NotFound { path: String },
    /// The resource exists but not with this method.
    #[error("{path} does not accept {method}: use {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    /// An operation that needs a body came without one.
    #[error("{operation} needs a JSON body, for example {example}")]
    MissingBody {
        operation: &'static str,
        example: &'static str,
    },
    /// The body is not JSON of the expected shape.
    #[error("the body of {operation} is not valid")]
    BadBody {
        operation: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A diff snapshot was asked for.
    #[error(
        "snapshot_type \"Diff\" is not supported: Hiber takes only full snapshots; \
         set \"snapshot_type\" to \"Full\" or leave it out"
    )]
    DiffSnapshot,
    /// Dirty page tracking was asked for.
    #[error(
        "{field}: true is not supported: Hiber does not track dirty pages because it takes \
         only full snapshots; set it to false or leave it out"
    )]
    DirtyTracking { field: &'static str },
    /// A userfaultfd memory backend was asked for.
    #[error(
        "backend_type \"Uffd\" is not supported: Hiber loads guest memory from a file; \
         use \"backend_type\": \"File\""
    )]
    UffdBackend,
    /// Both ways of naming the memory file were used.
    #[error("name the guest memory file once: give mem_backend or mem_file_path, not both")]
    MemoryTwice,
    /// Neither way of naming the memory file was used.
    #[error(
        "the guest memory file is missing: add \"mem_backend\": \
         {{\"backend_type\": \"File\", \"backend_path\": \"...\"}}"
    )]
    MemoryMissing,
    /// A path field is the empty string.
    #[error("{field} is empty: give the path of a file")]
    EmptyPath { field: &'static str },
    /// The id in the path and the id in the body differ.
    #[error(
        "the path names {field} `{in_path}` but the body says `{in_body}`: \
         give the same id in both"
    )]
    IdMismatch {
        field: &'static str,
        in_path: String,
        in_body: String,
    },
    /// A Firecracker setting or action Hiber does not have.
    #[error("{what} is not supported: {why}")]
    Unsupported { what: String, why: &'static str },
    /// A required field that Firecracker's schema leaves optional.
    #[error("{field} is required: {why}")]
    Required {
        field: &'static str,
        why: &'static str,
    },
    /// A MAC address that does not parse.
    #[error("{field}: {reason}")]
    BadMac { field: String, reason: String },
}

impl RouteError {
    /// The status code that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NotFound { .. } => 404,
            RouteError::MethodNotAllowed { .. } => 405,
            _ => 400,
        }
    }

    /// The `Allow` header value that goes with a 405 answer.
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            RouteError::MethodNotAllowed { allowed, .. } => Some(allowed),
            _ => None,
        }
    }
}

/// Body of `PATCH /vm`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmBody {
    state: VmStateChange,
}

#[derive(Deserialize)]
enum VmStateChange {
    Paused,
    Resumed,
}

/// Body of `PUT /snapshot/create`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    snapshot_path: PathBuf,
    mem_file_path: PathBuf,
    #[serde(default)]
    snapshot_type: SnapshotType,
}

#[derive(Deserialize, Default)]
enum SnapshotType {
    #[default]
    Full,
    Diff,
}

/// Body of `PUT /snapshot/load`, with Firecracker's deprecated fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    snapshot_path: PathBuf,
    mem_backend: Option<MemBackendBody>,
    mem_file_path: Option<PathBuf>,
    #[serde(default)]
    enable_diff_snapshots: bool,
    #[serde(default)]
    track_dirty_pages: bool,
    #[serde(default)]
    resume_vm: bool,
    #[serde(default)]
    network_overrides: Vec<preboot::NetworkOverrideBody>,
    vsock_override: Option<VsockOverrideBody>,
    #[serde(default)]
    drive_overrides: Vec<DriveOverrideBody>,
}

/// One entry of `drive_overrides`, Hiber's addition to Firecracker's load.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DriveOverrideBody {
    drive_id: String,
    path_on_host: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VsockOverrideBody {
    uds_path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemBackendBody {
    backend_type: BackendType,
    backend_path: PathBuf,
}

#[derive(Deserialize)]
enum BackendType {
    File,
    Uffd,
}

const PAUSE_EXAMPLE: &str = r#"{"state": "Paused"}"#;
const CREATE_EXAMPLE: &str = r#"{"snapshot_path": "vm.snap", "mem_file_path": "vm.mem"}"#;
const LOAD_EXAMPLE: &str = concat!(
    r#"{"snapshot_path": "vm.snap", "#,
    r#""mem_backend": {"backend_type": "File", "backend_path": "vm.mem"}}"#
);

/// Turns one HTTP request into an operation for the VMM.
///
/// `target` may carry a query string (ignored) and a trailing slash.
pub fn parse_request(method: &str, target: &str, body: &[u8]) -> Result<ApiRequest, RouteError> {
    let path = normalize(target);
    let resource = Resource::of(path).ok_or_else(|| RouteError::NotFound {
        path: path.to_string(),
    })?;
    let allowed = resource.methods();
    if !allowed.split(", ").any(|m| m == method) {
        return Err(RouteError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
            allowed,
        });
    }
    match resource {
        Resource::Info => Ok(ApiRequest::GetInfo),
        Resource::VmConfig => Ok(ApiRequest::GetVmConfig),
        Resource::Vm => parse_vm(body),
        Resource::SnapshotCreate => parse_create(body),
        Resource::SnapshotLoad => parse_load(body),
        Resource::MachineConfig if method == "GET" => Ok(ApiRequest::GetMachineConfig),
        Resource::MachineConfig => preboot::machine_config(body).map(configure),
        Resource::BootSource => preboot::boot_source(body).map(configure),
        Resource::Drive(id) => preboot::drive(id, body).map(configure),
        Resource::Network(id) => preboot::network(id, body).map(configure),
        Resource::Vsock => preboot::vsock(body).map(configure),
        Resource::Entropy => preboot::entropy(body).map(configure),
        Resource::Actions => preboot::action(body),
    }
}

fn configure(request: PrebootRequest) -> ApiRequest {
    ApiRequest::Configure(request)
}

/// The path without query string or trailing slash.
fn normalize(target: &str) -> &str {
    let path = target.split(['?', '#']).next().unwrap_or(target);
    match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => path,
    }
}

/// A resource of the API; the device ones carry the id from the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource<'a> {
    Info,
    VmConfig,
    Vm,
    SnapshotCreate,
    SnapshotLoad,
    BootSource,
    MachineConfig,
    Drive(&'a str),
    Network(&'a str),
    Vsock,
    Entropy,
    Actions,
}

impl<'a> Resource<'a> {
    /// The resource at `path`, `None` for an unknown one.
    fn of(path: &'a str) -> Option<Self> {
        let id = |prefix: &str| {
            path.strip_prefix(prefix)
                .filter(|id| !id.is_empty() && !id.contains('/'))
        };
        if let Some(id) = id("/drives/") {
            return Some(Resource::Drive(id));
        }
        if let Some(id) = id("/network-interfaces/") {
            return Some(Resource::Network(id));
        }
        Some(match path {
            "/" => Resource::Info,
            "/vm/config" => Resource::VmConfig,
            "/vm" => Resource::Vm,
            "/snapshot/create" => Resource::SnapshotCreate,
            "/snapshot/load" => Resource::SnapshotLoad,
            "/boot-source" => Resource::BootSource,
            "/machine-config" => Resource::MachineConfig,
            "/vsock" => Resource::Vsock,
            "/entropy" => Resource::Entropy,
            "/actions" => Resource::Actions,
            _ => return None,
        })
    }

    /// The methods the resource accepts, as an `Allow` header lists them.
    fn methods(self) -> &'static str {
        match self {
            Resource::Info | Resource::VmConfig => "GET",
            Resource::Vm => "PATCH",
            Resource::MachineConfig => "GET, PUT",
            _ => "PUT",
        }
    }
}

fn parse_vm(body: &[u8]) -> Result<ApiRequest, RouteError> {
    let body: VmBody = decode("PATCH /vm", PAUSE_EXAMPLE, body)?;
    Ok(match body.state {
        VmStateChange::Paused => ApiRequest::Pause,
        VmStateChange::Resumed => ApiRequest::Resume,
    })
}

fn parse_create(body: &[u8]) -> Result<ApiRequest, RouteError> {
    let body: CreateBody = decode("PUT /snapshot/create", CREATE_EXAMPLE, body)?;
    if let SnapshotType::Diff = body.snapshot_type {
        return Err(RouteError::DiffSnapshot);
    }
    Ok(ApiRequest::CreateSnapshot(CreateSnapshotParams {
        snapshot_path: non_empty("snapshot_path", body.snapshot_path)?,
        mem_file_path: non_empty("mem_file_path", body.mem_file_path)?,
    }))
}

fn parse_load(body: &[u8]) -> Result<ApiRequest, RouteError> {
    let body: LoadBody = decode("PUT /snapshot/load", LOAD_EXAMPLE, body)?;
    if body.enable_diff_snapshots {
        return Err(RouteError::DirtyTracking {
            field: "enable_diff_snapshots",
        });
    }
    if body.track_dirty_pages {
        return Err(RouteError::DirtyTracking {
            field: "track_dirty_pages",
        });
    }
    let (field, mem_file_path) = match (body.mem_backend, body.mem_file_path) {
        (Some(_), Some(_)) => return Err(RouteError::MemoryTwice),
        (None, None) => return Err(RouteError::MemoryMissing),
        (None, Some(path)) => ("mem_file_path", path),
        (Some(backend), None) => match backend.backend_type {
            BackendType::Uffd => return Err(RouteError::UffdBackend),
            BackendType::File => ("mem_backend.backend_path", backend.backend_path),
        },
    };
    let network_overrides = body
        .network_overrides
        .into_iter()
        .map(preboot::NetworkOverrideBody::into_override)
        .collect::<Result<Vec<_>, _>>()?;
    let vsock_override = match body.vsock_override {
        Some(o) => Some(non_empty("vsock_override.uds_path", o.uds_path)?),
        None => None,
    };
    Ok(ApiRequest::LoadSnapshot(LoadSnapshotParams {
        snapshot_path: non_empty("snapshot_path", body.snapshot_path)?,
        mem_file_path: non_empty(field, mem_file_path)?,
        mem_backend: MemBackendKind::File,
        resume_vm: body.resume_vm,
        network_overrides,
        vsock_override,
        drive_overrides: body
            .drive_overrides
            .into_iter()
            .map(|o| {
                Ok(DriveOverride {
                    path_on_host: non_empty("drive_overrides[].path_on_host", o.path_on_host)?,
                    drive_id: o.drive_id,
                })
            })
            .collect::<Result<Vec<_>, RouteError>>()?,
    }))
}

pub(super) fn decode<'a, T: Deserialize<'a>>(
    operation: &'static str,
    example: &'static str,
    body: &'a [u8],
) -> Result<T, RouteError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(RouteError::MissingBody { operation, example });
    }
    serde_json::from_slice(body).map_err(|source| RouteError::BadBody { operation, source })
}

pub(super) fn non_empty(field: &'static str, path: PathBuf) -> Result<PathBuf, RouteError> {
    if path.as_os_str().is_empty() {
        return Err(RouteError::EmptyPath { field });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error_chain;

    fn parse(method: &str, target: &str, body: &str) -> Result<ApiRequest, RouteError> {
        parse_request(method, target, body.as_bytes())
    }

    fn message(err: RouteError) -> String {
        error_chain(&err)
    }

    #[test]
    fn reads_are_routed() {
        assert_eq!(parse("GET", "/", "").unwrap(), ApiRequest::GetInfo);
        assert_eq!(
            parse("GET", "/vm/config", "").unwrap(),
            ApiRequest::GetVmConfig
        );
        assert_eq!(
            parse("GET", "/vm/config/?x=1", "").unwrap(),
            ApiRequest::GetVmConfig
        );
    }

    #[test]
    fn vm_state_changes_are_routed() {
        assert_eq!(
            parse("PATCH", "/vm", r#"{"state": "Paused"}"#).unwrap(),
            ApiRequest::Pause
        );
        assert_eq!(
            parse("PATCH", "/vm/", r#"{"state":"Resumed"}"#).unwrap(),
            ApiRequest::Resume
        );
        let err = parse("PATCH", "/vm", r#"{"state": "Frozen"}"#).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(message(err).contains("Frozen"));
    }

    #[test]
    fn snapshot_create_defaults_to_full() {
        let expected = ApiRequest::CreateSnapshot(CreateSnapshotParams {
            snapshot_path: "a.snap".into(),
            mem_file_path: "a.mem".into(),
        });
        let body = r#"{"snapshot_path": "a.snap", "mem_file_path": "a.mem"}"#;
        assert_eq!(parse("PUT", "/snapshot/create", body).unwrap(), expected);
        let full =
            r#"{"snapshot_type": "Full", "snapshot_path": "a.snap", "mem_file_path": "a.mem"}"#;
        assert_eq!(parse("PUT", "/snapshot/create", full).unwrap(), expected);
    }

    #[test]
    fn diff_snapshots_are_refused_with_a_reason() {
        let body = r#"{"snapshot_type": "Diff", "snapshot_path": "a", "mem_file_path": "b"}"#;
        let err = parse("PUT", "/snapshot/create", body).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(message(err).contains("only full snapshots"));
    }

    #[test]
    fn snapshot_load_takes_a_file_backend() {
        let body = r#"{"snapshot_path": "s", "resume_vm": true,
                       "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#;
        let expected = LoadSnapshotParams {
            snapshot_path: "s".into(),
            mem_file_path: "m".into(),
            mem_backend: MemBackendKind::File,
            resume_vm: true,
            network_overrides: Vec::new(),
            vsock_override: None,
            drive_overrides: Vec::new(),
        };
        let got = parse("PUT", "/snapshot/load", body).unwrap();
        assert_eq!(got, ApiRequest::LoadSnapshot(expected));
    }

    #[test]
    fn snapshot_load_takes_drive_overrides() {
        let body = r#"{"snapshot_path": "s", "mem_file_path": "m",
                       "drive_overrides": [{"drive_id": "drive0", "path_on_host": "c.img"}]}"#;
        let ApiRequest::LoadSnapshot(params) = parse("PUT", "/snapshot/load", body).unwrap() else {
            panic!("not a load request");
        };
        assert_eq!(params.drive_overrides[0].drive_id, "drive0");
        assert_eq!(
            params.drive_overrides[0].path_on_host,
            PathBuf::from("c.img")
        );
        let empty = r#"{"snapshot_path": "s", "mem_file_path": "m",
                        "drive_overrides": [{"drive_id": "drive0", "path_on_host": ""}]}"#;
        let err = parse("PUT", "/snapshot/load", empty).unwrap_err();
        assert!(message(err).contains("drive_overrides[].path_on_host is empty"));
    }

    #[test]
    fn snapshot_load_accepts_the_deprecated_fields() {
        let body = r#"{"snapshot_path": "s", "mem_file_path": "m",
                       "enable_diff_snapshots": false}"#;
        let ApiRequest::LoadSnapshot(params) = parse("PUT", "/snapshot/load", body).unwrap() else {
            panic!("not a load request");
        };
        assert_eq!(params.mem_file_path, PathBuf::from("m"));
        assert!(!params.resume_vm, "resume_vm defaults to false");
    }

    #[test]
    fn snapshot_load_refuses_what_hiber_cannot_do() {
        let uffd = r#"{"snapshot_path": "s",
                       "mem_backend": {"backend_type": "Uffd", "backend_path": "u.sock"}}"#;
        let diff = r#"{"snapshot_path": "s", "mem_file_path": "m",
                       "enable_diff_snapshots": true}"#;
        let dirty = r#"{"snapshot_path": "s", "mem_file_path": "m", "track_dirty_pages": true}"#;
        let both = r#"{"snapshot_path": "s", "mem_file_path": "m",
                       "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#;
        let none = r#"{"snapshot_path": "s"}"#;
        let empty = r#"{"snapshot_path": "", "mem_file_path": "m"}"#;
        for (body, needle) in [
            (uffd, "Uffd"),
            (diff, "enable_diff_snapshots"),
            (dirty, "track_dirty_pages"),
            (both, "not both"),
            (none, "missing"),
            (empty, "snapshot_path is empty"),
        ] {
            let err = parse("PUT", "/snapshot/load", body).unwrap_err();
            assert_eq!(err.status(), 400, "{body}");
            let text = message(err);
            assert!(text.contains(needle), "{body}: {text}");
        }
    }

    #[test]
    fn unknown_fields_are_named() {
        let body = r#"{"snapshot_path": "a", "mem_file_path": "b", "version": "1.0"}"#;
        let text = message(parse("PUT", "/snapshot/create", body).unwrap_err());
        assert!(text.contains("unknown field `version`"), "{text}");
        let body = r#"{"snapshot_path": "s",
                       "mem_backend": {"backend_type": "File", "backend_path": "m", "x": 1}}"#;
        let text = message(parse("PUT", "/snapshot/load", body).unwrap_err());
        assert!(text.contains("unknown field `x`"), "{text}");
    }

    #[test]
    fn bad_or_missing_json_is_a_bad_request() {
        let err = parse("PATCH", "/vm", r#"{"state": "#).unwrap_err();
        assert!(matches!(err, RouteError::BadBody { .. }));
        let text = message(parse("PATCH", "/vm", " \r\n").unwrap_err());
        assert!(text.contains("needs a JSON body"), "{text}");
        let text =
            message(parse("PUT", "/snapshot/create", r#"{"snapshot_path": "a"}"#).unwrap_err());
        assert!(text.contains("missing field `mem_file_path`"), "{text}");
    }

    #[test]
    fn snapshot_load_takes_network_and_vsock_overrides() {
        let body = r#"{"snapshot_path": "s", "mem_file_path": "m",
            "network_overrides": [
                {"iface_id": "eth0", "host_dev_name": "tap9"},
                {"iface_id": "eth1", "host_dev_name": "tap10", "guest_mac": "02:00:00:00:00:0a"}],
            "vsock_override": {"uds_path": "new.sock"}}"#;
        let ApiRequest::LoadSnapshot(p) = parse("PUT", "/snapshot/load", body).unwrap() else {
            panic!("not a load request");
        };
        let macs: Vec<Option<String>> = p
            .network_overrides
            .iter()
            .map(|o| o.guest_mac.map(|m| m.to_string()))
            .collect();
        assert_eq!(macs, [None, Some("02:00:00:00:00:0a".to_string())]);
        assert_eq!(p.network_overrides[1].host_dev_name, "tap10");
        assert_eq!(p.vsock_override, Some(PathBuf::from("new.sock")));
        for (body, needle) in [
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m",
                    "network_overrides": [{"iface_id": "eth0"}]}"#,
                "missing field `host_dev_name`",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides":
                    [{"iface_id": "e", "host_dev_name": "t", "guest_mac": "zz"}]}"#,
                "network_overrides[].guest_mac: MAC address `zz`",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m",
                    "vsock_override": {"uds_path": ""}}"#,
                "vsock_override.uds_path is empty",
            ),
        ] {
            let text = message(parse("PUT", "/snapshot/load", body).unwrap_err());
            assert!(text.contains(needle), "{text}");
        }
    }

    fn configure(method: &str, target: &str, body: &str) -> PrebootRequest {
        match parse(method, target, body) {
            Ok(ApiRequest::Configure(r)) => r,
            other => panic!("{target}: {other:?}"),
        }
    }

    fn refusal(target: &str, body: &str) -> String {
        let err = parse("PUT", target, body).unwrap_err();
        assert_eq!(err.status(), 400, "{target} {body}");
        message(err)
    }

    #[test]
    fn boot_source_and_machine_config_are_routed() {
        use crate::preboot::{BootSource, MachineSize};
        let body = r#"{"kernel_image_path": "k", "boot_args": "quiet", "initrd_path": "i"}"#;
        let expected = BootSource {
            kernel: "k".into(),
            initrd: Some("i".into()),
            boot_args: Some("quiet".into()),
        };
        assert_eq!(
            configure("PUT", "/boot-source", body),
            PrebootRequest::BootSource(expected)
        );
        let body = r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false,
                       "track_dirty_pages": false, "cpu_template": "None", "huge_pages": "None"}"#;
        let size = MachineSize {
            vcpu_count: 2,
            mem_size_mib: 256,
        };
        assert_eq!(
            configure("PUT", "/machine-config", body),
            PrebootRequest::Machine(size)
        );
        assert_eq!(
            parse("GET", "/machine-config", "").unwrap(),
            ApiRequest::GetMachineConfig
        );
        let text = refusal("/boot-source", r#"{"boot_args": "quiet"}"#);
        assert!(text.contains("missing field `kernel_image_path`"), "{text}");
        let text = refusal("/machine-config", r#"{"vcpu_count": 1}"#);
        assert!(text.contains("missing field `mem_size_mib`"), "{text}");
    }

    #[test]
    fn machine_features_hiber_lacks_are_refused_by_name() {
        let base = r#""vcpu_count": 1, "mem_size_mib": 128"#;
        for (extra, needle) in [
            (r#""smt": true"#, "smt: true is not supported"),
            (
                r#""track_dirty_pages": true"#,
                "track_dirty_pages: true is not supported",
            ),
            (
                r#""cpu_template": "T2""#,
                "cpu_template \"T2\" is not supported",
            ),
            (
                r#""huge_pages": "2M""#,
                "huge_pages \"2M\" is not supported",
            ),
            (
                r#""gdb_socket_path": "g""#,
                "unknown field `gdb_socket_path`",
            ),
        ] {
            let text = refusal("/machine-config", &format!("{{{base}, {extra}}}"));
            assert!(text.contains(needle), "{extra}: {text}");
        }
    }

    #[test]
    fn drives_are_routed_with_their_id() {
        use crate::config::DriveConfig;
        use crate::preboot::DriveSpec;
        let body = r#"{"drive_id": "rootfs", "path_on_host": "r.ext4", "is_root_device": true,
                       "is_read_only": false, "cache_type": "Writeback", "io_engine": "Sync",
                       "rate_limiter": {}}"#;
        let expected = DriveSpec {
            drive: DriveConfig {
                id: "rootfs".into(),
                path: "r.ext4".into(),
                read_only: false,
            },
            is_root_device: true,
        };
        assert_eq!(
            configure("PUT", "/drives/rootfs", body),
            PrebootRequest::Drive(expected)
        );
        let text = refusal("/drives/other", body);
        assert!(
            text.contains("names drive_id `other` but the body says `rootfs`"),
            "{text}"
        );
    }

    #[test]
    fn drive_settings_hiber_lacks_are_refused_by_name() {
        let base = r#""drive_id": "d", "path_on_host": "p", "is_root_device": false"#;
        for (extra, needle) in [
            (
                r#""is_read_only": true, "partuuid": "0eaa91a0-01""#,
                "partuuid is not supported",
            ),
            (
                r#""is_read_only": true, "rate_limiter": {"ops": {"size": 1, "refill_time": 1}}"#,
                "rate_limiter is not supported",
            ),
            (
                r#""is_read_only": true, "io_engine": "Async""#,
                "io_engine \"Async\" is not",
            ),
            (
                r#""is_read_only": true, "socket": "vhost.sock""#,
                "no vhost-user drives",
            ),
            (
                r#""is_read_only": true, "cache_type": "None""#,
                "unknown variant `None`",
            ),
            ("\"x\": 1", "unknown field `x`"),
            (
                r#""is_root_device": false"#,
                "duplicate field `is_root_device`",
            ),
        ] {
            let text = refusal("/drives/d", &format!("{{{base}, {extra}}}"));
            assert!(text.contains(needle), "{extra}: {text}");
        }
        let text = refusal("/drives/d", &format!("{{{base}}}"));
        assert!(text.contains("is_read_only is required"), "{text}");
        let body = r#"{"drive_id": "d", "is_root_device": false, "is_read_only": true}"#;
        assert!(refusal("/drives/d", body).contains("path_on_host is required"));
    }

    #[test]
    fn network_interfaces_are_routed_and_checked() {
        let body = r#"{"iface_id": "eth0", "host_dev_name": "tap0",
                       "guest_mac": "02:fc:00:00:00:05", "rx_rate_limiter": {"bandwidth": null}}"#;
        let PrebootRequest::Network(net) = configure("PUT", "/network-interfaces/eth0", body)
        else {
            panic!("not a network interface");
        };
        assert_eq!((net.id.as_str(), net.tap.as_str()), ("eth0", "tap0"));
        assert_eq!(net.mac.unwrap().to_string(), "02:fc:00:00:00:05");
        let base = r#""iface_id": "eth0", "host_dev_name": "tap0""#;
        for (extra, needle) in [
            (
                r#""guest_mac": "03:00:00:00:00:01""#,
                "guest_mac: MAC address",
            ),
            (
                r#""tx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}"#,
                "tx_rate_limiter is not supported",
            ),
            (r#""mtu": 1400"#, "mtu is not supported"),
        ] {
            let text = refusal("/network-interfaces/eth0", &format!("{{{base}, {extra}}}"));
            assert!(text.contains(needle), "{extra}: {text}");
        }
        let text = refusal("/network-interfaces/eth1", &format!("{{{base}}}"));
        assert!(text.contains("names iface_id `eth1`"), "{text}");
    }

    #[test]
    fn vsock_entropy_and_actions_are_routed() {
        let body = r#"{"guest_cid": 3, "uds_path": "v.sock", "vsock_id": "vsock0"}"#;
        let PrebootRequest::Vsock(v) = configure("PUT", "/vsock", body) else {
            panic!("not a vsock");
        };
        assert_eq!((v.guest_cid, v.uds_path), (3, PathBuf::from("v.sock")));
        assert!(refusal("/vsock", r#"{"guest_cid": -1, "uds_path": "v"}"#).contains("u32"));
        assert_eq!(configure("PUT", "/entropy", "{}"), PrebootRequest::Entropy);
        let limited = r#"{"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#;
        assert!(refusal("/entropy", limited).contains("rate_limiter is not supported"));
        let start = r#"{"action_type": "InstanceStart"}"#;
        assert_eq!(
            parse("PUT", "/actions", start).unwrap(),
            ApiRequest::InstanceStart
        );
        for (action, needle) in [
            ("FlushMetrics", "no Firecracker metrics"),
            ("SendCtrlAltDel", "no keyboard"),
            ("Reboot", "unknown variant `Reboot`"),
        ] {
            let text = refusal("/actions", &format!(r#"{{"action_type": "{action}"}}"#));
            assert!(text.contains(needle), "{action}: {text}");
        }
    }

    #[test]
    fn unknown_paths_and_wrong_methods_are_told_apart() {
        for path in [
            "/balloon",
            "/drives",
            "/drives/",
            "/drives/a/b",
            "/network-interfaces",
        ] {
            let err = parse("PUT", path, "{}").unwrap_err();
            assert_eq!((err.status(), err.allow()), (404, None), "{path}");
        }
        let err = parse("PATCH", "/machine-config", "{}").unwrap_err();
        assert_eq!((err.status(), err.allow()), (405, Some("GET, PUT")));
        let err = parse("GET", "/drives/d", "").unwrap_err();
        assert_eq!((err.status(), err.allow()), (405, Some("PUT")));
        let err = parse("GET", "/vm", "").unwrap_err();
        assert_eq!((err.status(), err.allow()), (405, Some("PATCH")));
        let err = parse("get", "/", "").unwrap_err();
        assert_eq!((err.status(), err.allow()), (405, Some("GET")));
        let err = parse("POST", "/snapshot/load", "{}").unwrap_err();
        assert_eq!((err.status(), err.allow()), (405, Some("PUT")));
    }
}
