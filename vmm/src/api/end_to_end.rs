//! End-to-end tests: a real [`ApiServer`] on a Unix socket in a scratch
//! directory, a fake VMM thread that answers through the channel and the
//! wake eventfd, and clients that behave well or badly.
//!
//! What this does not prove: that the real VMM thread answers correctly or
//! that its event loop watches the eventfd; only that the server's side of
//! that contract holds.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread;
use std::time::Duration;

use serde_json::json;
use vmm_sys_util::eventfd::EventFd;

use super::client::{self, fault_message};
use super::test_dir::TestDir;
use super::*;
use crate::config::{ConsoleConfig, MachineConfig, MemSize};
use crate::preboot::{PendingConfig, PrebootError};

/// Server limits short enough for tests to hit them quickly.
fn quick_options() -> ServerOptions {
    ServerOptions {
        reply_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        // Room for the connections of earlier requests that are still
        // closing (the server drains each for up to 100 ms) on a busy
        // machine; the limit itself is tested with its own options.
        max_connections: 16,
    }
}

/// Answers each request with `answer`; `None` drops the call unanswered.
fn spawn_vmm<F>(wake: EventFd, calls: Receiver<ApiCall>, mut answer: F)
where
    F: FnMut(ApiRequest) -> Option<ApiResponse> + Send + 'static,
{
    thread::spawn(move || loop {
        // Like the VMM's event loop: sleep on the eventfd, then drain the channel.
        if wake.read().is_err() {
            return;
        }
        loop {
            match calls.try_recv() {
                Ok(call) => {
                    let ApiCall { request, reply } = call;
                    if let Some(response) = answer(request) {
                        let _ = reply.send(response);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
    });
}

/// A VMM that keeps a run state and refuses transitions that do not apply.
fn stateful_vmm() -> impl FnMut(ApiRequest) -> Option<ApiResponse> + Send {
    let mut state = VmRunState::Running;
    move |request| {
        Some(match request {
            ApiRequest::GetInfo => ApiResponse::ok(InstanceInfo::new("test-vm", state).to_json()),
            ApiRequest::GetVmConfig => {
                ApiResponse::ok(json!({"vcpu_count": 1, "mem_size_mib": 64}))
            }
            ApiRequest::Pause if state == VmRunState::Paused => {
                ApiResponse::error(400, "the VM is already paused")
            }
            ApiRequest::Pause => {
                state = VmRunState::Paused;
                ApiResponse::no_content()
            }
            ApiRequest::Resume => {
                state = VmRunState::Running;
                ApiResponse::no_content()
            }
            ApiRequest::CreateSnapshot(_) if state != VmRunState::Paused => {
                ApiResponse::error(400, "pause the VM before taking a snapshot")
            }
            ApiRequest::CreateSnapshot(_) | ApiRequest::LoadSnapshot(_) => {
                ApiResponse::no_content()
            }
            ApiRequest::GetMachineConfig => ApiResponse::error(400, "no machine-config here"),
            ApiRequest::Configure(_) | ApiRequest::InstanceStart => {
                ApiResponse::error(400, "this VM is running: pre-boot calls are refused")
            }
        })
    }
}

/// A VMM before boot: pre-boot calls go to a real [`PendingConfig`], and
/// `InstanceStart` "boots" whatever that configuration lets through.
fn preboot_vmm() -> impl FnMut(ApiRequest) -> Option<ApiResponse> + Send {
    let mut pending = PendingConfig::new(MachineConfig {
        vcpus: 1,
        mem: MemSize(128 << 20),
        kernel: None,
        initrd: None,
        cmdline: "console=ttyS0".into(),
        console: ConsoleConfig::Stdio,
        drives: Vec::new(),
        nets: Vec::new(),
        vsock: None,
        entropy: true,
    });
    let answer = |result: Result<(), PrebootError>| match result {
        Ok(()) => ApiResponse::no_content(),
        Err(e) => ApiResponse::error(400, error_chain(&e)),
    };
    move |request| {
        Some(match request {
            ApiRequest::GetInfo => {
                let state = match pending.started() {
                    true => VmRunState::Running,
                    false => VmRunState::NotStarted,
                };
                ApiResponse::ok(InstanceInfo::new("test-vm", state).to_json())
            }
            ApiRequest::GetMachineConfig => {
                ApiResponse::ok(crate::preboot::machine_config_json(&pending.preview()))
            }
            ApiRequest::GetVmConfig => {
                ApiResponse::ok(json!({"boot_args": pending.preview().cmdline}))
            }
            ApiRequest::Configure(r) => answer(pending.apply(r)),
            ApiRequest::InstanceStart => answer(pending.to_boot().map(|_| pending.mark_started())),
            ApiRequest::LoadSnapshot(_) if pending.configured() => {
                answer(Err(PrebootError::LoadAfterConfig))
            }
            _ => ApiResponse::error(400, "the VM is not started"),
        })
    }
}

struct Setup {
    _dir: TestDir,
    sock: PathBuf,
    server: ApiServer,
}

fn start<F>(name: &str, options: ServerOptions, answer: F) -> Setup
where
    F: FnMut(ApiRequest) -> Option<ApiResponse> + Send + 'static,
{
    let dir = TestDir::new(name);
    let sock = dir.path().join("api.sock");
    let (calls_tx, calls_rx) = mpsc::channel();
    let wake = EventFd::new(0).unwrap();
    spawn_vmm(wake.try_clone().unwrap(), calls_rx, answer);
    let server = ApiServer::start_with_options(&sock, calls_tx, wake, options).unwrap();
    Setup {
        _dir: dir,
        sock,
        server,
    }
}

fn call(sock: &Path, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
    let (status, body) = client::request(sock, method, path, body.as_ref()).unwrap();
    let text = fault_message(body.as_ref()).map(str::to_string);
    (
        status,
        text.unwrap_or_else(|| body.map(|b| b.to_string()).unwrap_or_default()),
    )
}

/// Writes `bytes` and reads until the server closes the connection.
fn raw_exchange(sock: &Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `stream` until `needle` has arrived.
fn read_until(stream: &mut UnixStream, needle: &str) -> String {
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn pause_snapshot_resume_round_trip() {
    let s = start("e2e-flow", quick_options(), stateful_vmm());
    let info = client::request(&s.sock, "GET", "/", None).unwrap();
    assert_eq!(info.0, 200);
    let info: InstanceInfo = serde_json::from_value(info.1.unwrap()).unwrap();
    assert_eq!(
        (info.state, info.app_name.as_str()),
        (VmRunState::Running, "hiber")
    );

    let create = json!({"snapshot_path": "vm.snap", "mem_file_path": "vm.mem"});
    let (status, text) = call(&s.sock, "PUT", "/snapshot/create", Some(create.clone()));
    assert_eq!(
        (status, text.as_str()),
        (400, "pause the VM before taking a snapshot")
    );
    assert_eq!(
        call(&s.sock, "PATCH", "/vm", Some(json!({"state": "Paused"}))).0,
        204
    );
    assert_eq!(
        call(&s.sock, "PATCH", "/vm", Some(json!({"state": "Paused"}))).0,
        400
    );
    assert_eq!(
        call(&s.sock, "PUT", "/snapshot/create", Some(create)).0,
        204
    );
    let (status, text) = call(&s.sock, "GET", "/", None);
    assert!(
        status == 200 && text.contains("\"Paused\""),
        "{status} {text}"
    );
    assert_eq!(
        call(&s.sock, "PATCH", "/vm", Some(json!({"state": "Resumed"}))).0,
        204
    );

    let (status, text) = call(&s.sock, "GET", "/vm/config", None);
    assert_eq!(
        (status, text.as_str()),
        (200, r#"{"mem_size_mib":64,"vcpu_count":1}"#)
    );
}

#[test]
fn errors_arrive_as_fault_messages() {
    let s = start("e2e-errors", quick_options(), stateful_vmm());
    let (status, text) = call(&s.sock, "GET", "/balloon", None);
    assert!(
        status == 404 && text.contains("/snapshot/load") && text.contains("/actions"),
        "{status} {text}"
    );
    let body = json!({"snapshot_path": "a", "mem_file_path": "b", "snapshot_type": "Diff"});
    let (status, text) = call(&s.sock, "PUT", "/snapshot/create", Some(body));
    assert!(
        status == 400 && text.contains("only full snapshots"),
        "{status} {text}"
    );
    let body = json!({"state": "Paused", "force": true});
    let (status, text) = call(&s.sock, "PATCH", "/vm", Some(body));
    assert!(
        status == 400 && text.contains("unknown field `force`"),
        "{status} {text}"
    );

    let reply = raw_exchange(&s.sock, b"DELETE /vm HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 405 "), "{reply}");
    assert!(reply.contains("\r\nAllow: PATCH\r\n"), "{reply}");
    let big = format!(
        "PUT /snapshot/load HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    let reply = raw_exchange(&s.sock, big.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 413 "), "{reply}");
    assert!(reply.contains("fault_message"), "{reply}");
}

#[test]
fn a_garbage_client_does_not_stop_the_server() {
    let s = start("e2e-garbage", quick_options(), stateful_vmm());
    let reply = raw_exchange(&s.sock, b"\x16\x03\x01\x02\x00garbage\r\n\r\nmore garbage");
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert!(reply.contains("Connection: close"), "{reply}");
    let reply = raw_exchange(
        &s.sock,
        b"PATCH /vm HTTP/1.1\r\nConnection: close\r\nContent-Length: 5\r\n\r\n{{{{{",
    );
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    // The truncated request gets no answer: the client closed its side early.
    let mut half = UnixStream::connect(&s.sock).unwrap();
    half.write_all(b"PUT /snapshot/load HTTP/1.1\r\nContent-Len")
        .unwrap();
    drop(half);
    assert_eq!(call(&s.sock, "GET", "/", None).0, 200);
}

#[test]
fn a_kept_alive_connection_serves_pipelined_requests() {
    let s = start("e2e-pipeline", quick_options(), stateful_vmm());
    let pause = r#"{"state": "Paused"}"#;
    let requests = format!(
        "GET / HTTP/1.1\r\n\r\nPATCH /vm HTTP/1.1\r\nContent-Length: {}\r\n\r\n{pause}\
         GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        pause.len()
    );
    let reply = raw_exchange(&s.sock, requests.as_bytes());
    let statuses: Vec<&str> = reply.matches("HTTP/1.1 ").collect();
    assert_eq!(statuses.len(), 3, "{reply}");
    let first = reply.find("\"Running\"").expect("first GET sees Running");
    let last = reply.rfind("\"Paused\"").expect("last GET sees Paused");
    assert!(
        first < last && reply.contains("HTTP/1.1 204 No Content"),
        "{reply}"
    );
}

#[test]
fn expect_continue_gets_an_interim_answer() {
    let s = start("e2e-continue", quick_options(), stateful_vmm());
    let body = r#"{"state": "Paused"}"#;
    let mut stream = UnixStream::connect(&s.sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "PATCH /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    assert!(read_until(&mut stream, "\r\n\r\n").starts_with("HTTP/1.1 100 Continue\r\n"));
    stream.write_all(body.as_bytes()).unwrap();
    assert!(read_until(&mut stream, "\r\n\r\n").starts_with("HTTP/1.1 204 "));
}

#[test]
fn a_slow_client_is_timed_out_with_408() {
    let options = ServerOptions {
        request_timeout: Duration::from_millis(200),
        ..quick_options()
    };
    let s = start("e2e-slow", options, stateful_vmm());
    let reply = raw_exchange(&s.sock, b"GET / HTTP/1.1\r\nHost: loc");
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    assert_eq!(call(&s.sock, "GET", "/", None).0, 200);
}

#[test]
fn connections_beyond_the_limit_get_503() {
    let options = ServerOptions {
        max_connections: 1,
        ..quick_options()
    };
    let s = start("e2e-full", options, stateful_vmm());
    let mut held = UnixStream::connect(&s.sock).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    held.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    read_until(&mut held, "}");
    let reply = raw_exchange(&s.sock, b"GET / HTTP/1.1\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
    drop(held);
    let served = (0..50).any(|_| {
        thread::sleep(Duration::from_millis(20));
        raw_exchange(&s.sock, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .starts_with("HTTP/1.1 200 ")
    });
    assert!(
        served,
        "the slot was not freed after the held connection closed"
    );
}

#[test]
fn a_vmm_that_does_not_answer_gives_500_or_504() {
    let s = start("e2e-drop", quick_options(), |_| None);
    let (status, text) = call(&s.sock, "GET", "/", None);
    assert!(
        status == 500 && text.contains("without answering"),
        "{status} {text}"
    );

    let options = ServerOptions {
        reply_timeout: Duration::from_millis(100),
        ..quick_options()
    };
    let s = start("e2e-late", options, |_| {
        thread::sleep(Duration::from_millis(500));
        Some(ApiResponse::no_content())
    });
    let (status, text) = call(&s.sock, "PATCH", "/vm", Some(json!({"state": "Paused"})));
    assert!(
        status == 504 && text.contains("may still complete"),
        "{status} {text}"
    );
}

#[test]
fn a_vmm_that_is_gone_gives_503() {
    let dir = TestDir::new("e2e-gone");
    let sock = dir.path().join("api.sock");
    let (calls_tx, calls_rx) = mpsc::channel();
    drop(calls_rx);
    let wake = EventFd::new(0).unwrap();
    let _server = ApiServer::start_with_options(&sock, calls_tx, wake, quick_options()).unwrap();
    let (status, text) = call(&sock, "GET", "/", None);
    assert!(
        status == 503 && text.contains("shutting down"),
        "{status} {text}"
    );
}

#[test]
fn the_socket_file_is_private_replaced_when_stale_and_removed_on_drop() {
    let s = start("e2e-socket", quick_options(), stateful_vmm());
    let mode = std::fs::metadata(&s.sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(s.server.path(), s.sock.as_path());
    let Setup {
        _dir: dir,
        sock,
        server,
    } = s;
    server.shutdown();
    assert!(!sock.exists(), "shutdown left the socket file behind");
    let err = client::request(&sock, "GET", "/", None).unwrap_err();
    assert!(matches!(err, ClientError::NoServer { .. }), "{err:?}");

    drop(UnixListener::bind(&sock).unwrap());
    assert!(
        sock.exists(),
        "the stale socket file should exist for this test"
    );
    let (calls_tx, _calls_rx) = mpsc::channel();
    let server = ApiServer::start(&sock, calls_tx, EventFd::new(0).unwrap()).unwrap();
    drop(server);
    assert!(!sock.exists(), "drop left the socket file behind");
    drop(dir);
}

#[test]
fn a_live_socket_or_another_file_is_never_replaced() {
    let s = start("e2e-in-use", quick_options(), stateful_vmm());
    let (calls_tx, _calls_rx) = mpsc::channel();
    let err = ApiServer::start(&s.sock, calls_tx.clone(), EventFd::new(0).unwrap()).unwrap_err();
    assert!(matches!(err, ServerError::InUse { .. }), "{err:?}");
    assert!(
        err.to_string().contains("another process is serving"),
        "{err}"
    );
    assert_eq!(
        call(&s.sock, "GET", "/", None).0,
        200,
        "the first server must keep serving"
    );

    let file = s.sock.with_file_name("regular-file");
    std::fs::write(&file, b"keep me").unwrap();
    let err = ApiServer::start(&file, calls_tx, EventFd::new(0).unwrap()).unwrap_err();
    assert!(matches!(err, ServerError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn unread_bytes_do_not_reset_the_last_answer() {
    let s = start("e2e-unread", quick_options(), stateful_vmm());
    let mut bytes = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 48 * 1024));
    let reply = raw_exchange(&s.sock, &bytes);
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");

    let mut bytes = format!(
        "PUT /snapshot/load HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    )
    .into_bytes();
    bytes.extend(std::iter::repeat_n(b'{', 48 * 1024));
    let reply = raw_exchange(&s.sock, &bytes);
    assert!(reply.starts_with("HTTP/1.1 413 "), "{reply}");
}

/// A scratch directory with a fake kernel and a disk image.
fn preboot_files(name: &str) -> (TestDir, PathBuf, PathBuf) {
    let dir = TestDir::new(name);
    let kernel = dir.path().join("vmlinux");
    let mut elf = b"\x7fELF".to_vec();
    elf.resize(1024, 0);
    std::fs::write(&kernel, elf).unwrap();
    let disk = dir.path().join("data.ext4");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    (dir, kernel, disk)
}

#[test]
fn a_guest_is_configured_and_started_over_http() {
    let (_files, kernel, disk) = preboot_files("e2e-preboot-files");
    let s = start("e2e-preboot", quick_options(), preboot_vmm());
    let put = |path: &str, body: serde_json::Value| call(&s.sock, "PUT", path, Some(body));

    let start_action = json!({"action_type": "InstanceStart"});
    let (status, text) = put("/actions", start_action.clone());
    assert!(
        status == 400 && text.contains("PUT /boot-source"),
        "{status} {text}"
    );
    let (status, text) = put("/boot-source", json!({"kernel_image_path": "/no/vmlinux"}));
    assert!(
        status == 400 && text.contains("cannot open kernel /no/vmlinux"),
        "{status} {text}"
    );
    let boot = json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0 quiet"});
    assert_eq!(put("/boot-source", boot), (204, String::new()));

    let machine = json!({"vcpu_count": 2, "mem_size_mib": 256});
    assert_eq!(put("/machine-config", machine).0, 204);
    let (status, text) = call(&s.sock, "GET", "/machine-config", None);
    assert_eq!(status, 200);
    let got: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (got["vcpu_count"].clone(), got["mem_size_mib"].clone()),
        (2.into(), 256.into())
    );
    let (status, text) = put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64,
                                                       "smt": true}),
    );
    assert!(
        status == 400 && text.contains("smt: true is not supported"),
        "{status} {text}"
    );

    let drive = json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true,
                       "is_read_only": true});
    assert_eq!(put("/drives/rootfs", drive.clone()).0, 204);
    let (status, text) = put("/drives/data", drive.clone());
    assert!(
        status == 400 && text.contains("names drive_id `data`"),
        "{status} {text}"
    );
    let missing = json!({"drive_id": "d2", "path_on_host": "/no/disk", "is_root_device": false,
                         "is_read_only": true});
    let (status, text) = put("/drives/d2", missing);
    assert!(
        status == 400 && text.contains("drive `d2`: cannot open /no/disk"),
        "{status} {text}"
    );
    let (status, text) = call(&s.sock, "GET", "/vm/config", None);
    assert!(
        status == 200 && text.contains("root=/dev/vda ro"),
        "{status} {text}"
    );

    let net = json!({"iface_id": "eth0", "host_dev_name": "a-tap-name-too-long"});
    let (status, text) = put("/network-interfaces/eth0", net);
    assert!(
        status == 400 && text.contains("longer than 15 bytes"),
        "{status} {text}"
    );
    let vsock = json!({"guest_cid": 2, "uds_path": "v.sock"});
    let (status, text) = put("/vsock", vsock);
    assert!(
        status == 400 && text.contains("guest cid 2 is reserved"),
        "{status} {text}"
    );
    assert_eq!(put("/entropy", json!({})).0, 204);

    let load = json!({"snapshot_path": "s", "mem_file_path": "m"});
    let (status, text) = put("/snapshot/load", load);
    assert!(
        status == 400 && text.contains("after pre-boot configuration"),
        "{status} {text}"
    );

    assert_eq!(put("/actions", start_action.clone()), (204, String::new()));
    let (_, info) = call(&s.sock, "GET", "/", None);
    assert!(info.contains("\"Running\""), "{info}");
    let (status, text) = put("/drives/rootfs", drive);
    assert!(
        status == 400 && text.contains("only allowed before InstanceStart"),
        "{status} {text}"
    );
    let (status, text) = put("/actions", start_action);
    assert!(
        status == 400 && text.starts_with("InstanceStart is only allowed"),
        "{status} {text}"
    );
}

#[test]
fn pre_boot_resources_answer_wrong_methods_and_actions_like_firecracker() {
    let s = start("e2e-preboot-methods", quick_options(), preboot_vmm());
    let reply = raw_exchange(
        &s.sock,
        b"GET /drives/d HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 405 "), "{reply}");
    assert!(reply.contains("\r\nAllow: PUT\r\n"), "{reply}");
    let reply = raw_exchange(
        &s.sock,
        b"DELETE /machine-config HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.contains("\r\nAllow: GET, PUT\r\n"), "{reply}");
    let metrics = json!({"action_type": "FlushMetrics"});
    let (status, text) = call(&s.sock, "PUT", "/actions", Some(metrics));
    assert!(
        status == 400 && text.contains("FlushMetrics"),
        "{status} {text}"
    );
    let (status, text) = call(&s.sock, "PUT", "/entropy", None);
    assert!(
        status == 400 && text.contains("needs a JSON body"),
        "{status} {text}"
    );
    let (status, text) = call(&s.sock, "GET", "/machine-config", None);
    assert!(
        status == 200 && text.contains("\"huge_pages\":\"None\""),
        "{status} {text}"
    );
}
