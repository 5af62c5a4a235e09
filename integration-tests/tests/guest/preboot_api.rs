//! Firecracker's pre-boot calls against a real `hiber run --api-sock`
//! process started without a kernel; and the command line's device flags,
//! refused before anything starts.
//!
//! What this does not prove: that the guest sees the drive configured here
//! (only that the configuration is accepted and the guest boots with it).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use integration_tests::fixture::BOOT_TIMEOUT;
use integration_tests::{guest_images, scratch_dir, Vmm, TEST_CMDLINE};
use serde_json::{json, Value};

use super::cli_errors::hiber;
use crate::CMD_TIMEOUT;

fn fault(reply: &Option<Value>) -> String {
    let message = reply.as_ref().and_then(|r| r["fault_message"].as_str());
    message.unwrap_or_default().to_string()
}

/// Sends a pre-boot `PUT` and asserts it was taken.
fn put_ok(vmm: &Vmm, path: &str, body: Value) {
    let (status, reply) = vmm.api("PUT", path, Some(body));
    assert_eq!(status, 204, "PUT {path}: {reply:?}\n{}", vmm.log());
}

/// Asserts that a `PUT` after the start is refused as Firecracker does.
fn assert_refused_after_start(vmm: &Vmm, path: &str, body: Value) {
    let (status, reply) = vmm.api("PUT", path, Some(body));
    let message = fault(&reply);
    assert_eq!(status, 400, "PUT {path}: {reply:?}");
    assert!(
        message.contains("only allowed before InstanceStart"),
        "PUT {path}: {message}"
    );
}

/// The recipe's data disk (beside the guest kernel), copied so that
/// nothing can change the original.
fn data_disk(dir: &Path) -> PathBuf {
    let (kernel, _) = guest_images();
    let original = kernel.with_file_name("data.ext4");
    let copy = dir.join("data.ext4");
    std::fs::copy(&original, &copy)
        .unwrap_or_else(|e| panic!("{}: {e}: run `make guest-images` first", original.display()));
    copy
}

#[test]
fn a_guest_configured_over_the_preboot_api_boots() {
    let dir = scratch_dir("preboot-api");
    let disk = data_disk(&dir);
    let (kernel, initrd) = guest_images();
    let vmm = Vmm::spawn(&dir, &["run".to_string()]);
    let (status, info) = vmm.api("GET", "/", None);
    assert_eq!(
        (status, info.unwrap()["state"].clone()),
        (200, "Not started".into())
    );
    let (status, reply) = vmm.api(
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
    );
    assert!(
        status == 400 && fault(&reply).contains("PUT /boot-source"),
        "{reply:?}"
    );

    let boot = json!({
        "kernel_image_path": kernel,
        "initrd_path": initrd,
        "boot_args": TEST_CMDLINE,
    });
    put_ok(&vmm, "/boot-source", boot.clone());
    let machine = json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false});
    put_ok(&vmm, "/machine-config", machine.clone());
    let drive = json!({
        "drive_id": "data",
        "path_on_host": disk,
        "is_root_device": false,
        "is_read_only": true,
    });
    put_ok(&vmm, "/drives/data", drive.clone());
    let (status, config) = vmm.api("GET", "/machine-config", None);
    let config = config.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        (config["vcpu_count"].clone(), config["mem_size_mib"].clone()),
        (1.into(), 128.into())
    );

    put_ok(&vmm, "/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(vmm.api("GET", "/", None).1.unwrap()["state"], "Running");
    assert_refused_after_start(&vmm, "/drives/data", drive);
    assert_refused_after_start(&vmm, "/boot-source", boot);
    assert_refused_after_start(&vmm, "/machine-config", machine);
    let (status, reply) = vmm.api(
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
    );
    assert!(
        status == 400 && fault(&reply).contains("InstanceStart is only allowed"),
        "{reply:?}"
    );

    vmm.wait_for("hiber-guest: ready", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", vmm.log()));
    vmm.wait_for("hiber-agent: listening", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", vmm.log()));
    let r = vmm.run("echo booted-over-api", CMD_TIMEOUT).unwrap();
    assert!(r.output.contains("booted-over-api"), "{r:?}");
    let (_, config) = vmm.api("GET", "/vm/config", None);
    let args = config.unwrap()["boot-source"]["boot_args"].to_string();
    assert!(args.contains("init_on_alloc=0"), "{args}");
}

/// Asserts a refusal (see `cli_errors`) in a one-line message.
fn assert_refused(out: &Output, needle: &str) {
    super::cli_errors::assert_refused(out, needle);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
}

#[test]
fn preboot_device_flags_are_refused_before_anything_starts() {
    let dir = scratch_dir("preboot-flags");
    let disk = data_disk(&dir);
    let (kernel, _) = guest_images();
    let kernel = kernel.to_str().unwrap().to_string();
    let disk = disk.to_str().unwrap().to_string();
    let sock = dir.join("v.sock").to_str().unwrap().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--kernel", kernel.as_str()];
        args.extend_from_slice(extra);
        hiber(&args)
    };
    let missing = "path=/nonexistent/disk.img";
    assert_refused(
        &run(&["--drive", missing]),
        "drive `drive0`: cannot open /nonexistent",
    );
    let twice = format!("path={disk},read-only=on,id=d");
    assert_refused(
        &run(&["--drive", &twice, "--drive", &twice]),
        "two drives have the id `d`",
    );
    let long = "tap=this-name-is-too-long";
    assert_refused(&run(&["--net", long]), "longer than 15 bytes");
    let cid = format!("cid=2,uds={sock}");
    assert_refused(&run(&["--vsock", &cid]), "guest cid 2 is reserved");
    let nodir = "cid=3,uds=/nonexistent/dir/v.sock";
    assert_refused(&run(&["--vsock", nodir]), "directory that does not exist");
    let parser = run(&["--drive", "file=x"]);
    assert_eq!(parser.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&parser.stderr).contains("no key `file`"));
    let restore = hiber(&[
        "restore",
        "--snapshot",
        "/nonexistent.state",
        "--mem",
        "/nonexistent.mem",
        "--net-override",
        "eth0=this-name-is-too-long",
    ]);
    assert_refused(&restore, "longer than 15 bytes");
}
