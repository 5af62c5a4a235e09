//! Maps an HTTP method, path and JSON body onto a typed [`ApiRequest`].
//!
//! Paths, methods and body fields follow Firecracker's API wherever Hiber
//! offers the same operation, so that its clients work unchanged. Bodies are
//! strict: an unknown field is refused with a message that names it.

use std::path::PathBuf;

use serde::Deserialize;

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
}

/// Why a request does not name a valid operation.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No resource at this path.
    #[error(
        "there is no API resource at {path:?}: the API serves /, /vm, /vm/config, \
         /snapshot/create and /snapshot/load"
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
    let allowed = allowed_method(path).ok_or_else(|| RouteError::NotFound {
        path: path.to_string(),
    })?;
    if method != allowed {
        return Err(RouteError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
            allowed,
        });
    }
    match path {
        "/" => Ok(ApiRequest::GetInfo),
        "/vm/config" => Ok(ApiRequest::GetVmConfig),
        "/vm" => parse_vm(body),
        "/snapshot/create" => parse_create(body),
        _ => parse_load(body),
    }
}

/// The path without query string or trailing slash.
fn normalize(target: &str) -> &str {
    let path = target.split(['?', '#']).next().unwrap_or(target);
    match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => path,
    }
}

/// The one method each resource accepts, `None` for an unknown path.
fn allowed_method(path: &str) -> Option<&'static str> {
    match path {
        "/" | "/vm/config" => Some("GET"),
        "/vm" => Some("PATCH"),
        "/snapshot/create" | "/snapshot/load" => Some("PUT"),
        _ => None,
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
    Ok(ApiRequest::LoadSnapshot(LoadSnapshotParams {
        snapshot_path: non_empty("snapshot_path", body.snapshot_path)?,
        mem_file_path: non_empty(field, mem_file_path)?,
        mem_backend: MemBackendKind::File,
        resume_vm: body.resume_vm,
    }))
}

fn decode<'a, T: Deserialize<'a>>(
    operation: &'static str,
    example: &'static str,
    body: &'a [u8],
) -> Result<T, RouteError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(RouteError::MissingBody { operation, example });
    }
    serde_json::from_slice(body).map_err(|source| RouteError::BadBody { operation, source })
}

fn non_empty(field: &'static str, path: PathBuf) -> Result<PathBuf, RouteError> {
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
        };
        let got = parse("PUT", "/snapshot/load", body).unwrap();
        assert_eq!(got, ApiRequest::LoadSnapshot(expected));
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
    fn unknown_paths_and_wrong_methods_are_told_apart() {
        let err = parse("GET", "/machine-config", "").unwrap_err();
        assert_eq!(err.status(), 404);
        assert_eq!(err.allow(), None);
        let err = parse("GET", "/vm", "").unwrap_err();
        assert_eq!((err.status(), err.allow()), (405, Some("PATCH")));
        let err = parse("get", "/", "").unwrap_err();
        assert_eq!((err.status(), err.allow()), (405, Some("GET")));
        let err = parse("POST", "/snapshot/load", "{}").unwrap_err();
        assert_eq!((err.status(), err.allow()), (405, Some("PUT")));
    }
}
