//! The checks every device setting passes, from the API or from the
//! command line, before anything is created: files that must open, names
//! that must be valid and unique, socket paths that must fit.

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::{PrebootError, MAX_ID_LEN, MAX_TAP_NAME_LEN, MAX_UDS_PATH_LEN, MIN_GUEST_CID};
use crate::config::{DriveConfig, MachineConfig, NetConfig, VsockConfig};
use crate::persist::{DriveOverride, NetOverride};

/// Refuses a kernel file that cannot be read or is neither an ELF vmlinux
/// nor a bzImage.
pub fn check_kernel(path: &Path) -> Result<(), PrebootError> {
    if path.as_os_str().is_empty() {
        let what = "kernel_image_path".to_string();
        return Err(PrebootError::EmptyPath { what });
    }
    let open_err = |source| PrebootError::Kernel {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 0x206];
    let mut file = fs::File::open(path).map_err(open_err)?;
    let n = file.read(&mut head).map_err(open_err)?;
    let elf = n >= 4 && head[..4] == *b"\x7fELF";
    let bzimage = n >= 0x206 && head[0x202..0x206] == *b"HdrS";
    if elf || bzimage {
        Ok(())
    } else {
        Err(PrebootError::NotAKernel {
            path: path.to_path_buf(),
        })
    }
}

/// Refuses an initrd file that cannot be opened.
pub fn check_initrd(path: &Path) -> Result<(), PrebootError> {
    fs::File::open(path)
        .map(drop)
        .map_err(|source| PrebootError::Initrd {
            path: path.to_path_buf(),
            source,
        })
}

/// Refuses an id Firecracker clients could not have meant: empty, too
/// long, or with characters other than letters, digits, `_` and `-`.
pub fn check_id(kind: &'static str, id: &str) -> Result<(), PrebootError> {
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(valid) {
        let id = id.to_string();
        return Err(PrebootError::BadId { kind, id });
    }
    Ok(())
}

/// Refuses a drive whose file cannot be opened the way the guest will use
/// it: for reading, and for writing unless the drive is read-only.
pub fn check_drive(drive: &DriveConfig) -> Result<(), PrebootError> {
    check_id("drive", &drive.id)?;
    let id = || drive.id.clone();
    let path = || drive.path.clone();
    if drive.path.as_os_str().is_empty() {
        let what = format!("the path of drive `{}`", drive.id);
        return Err(PrebootError::EmptyPath { what });
    }
    let open_err = |source| PrebootError::DriveOpen {
        id: id(),
        path: path(),
        source,
    };
    let kind = fs::metadata(&drive.path).map_err(open_err)?.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        let (id, path) = (id(), path());
        return Err(PrebootError::DriveNotAFile { id, path });
    }
    fs::File::open(&drive.path).map_err(open_err)?;
    if !drive.read_only {
        let writable = OpenOptions::new().read(true).write(true).open(&drive.path);
        writable.map_err(|source| PrebootError::DriveNotWritable {
            id: id(),
            path: path(),
            source,
        })?;
    }
    Ok(())
}

/// Refuses an interface whose id, TAP name or MAC address cannot work.
pub fn check_net(net: &NetConfig) -> Result<(), PrebootError> {
    check_id("network interface", &net.id)?;
    if let Some(reason) = tap_name_problem(&net.tap) {
        let (id, tap) = (net.id.clone(), net.tap.clone());
        return Err(PrebootError::TapName { id, tap, reason });
    }
    if net.mac.is_some_and(|m| m.0 == [0; 6]) {
        let id = net.id.clone();
        return Err(PrebootError::ZeroMac { id });
    }
    Ok(())
}

/// What Linux would refuse in an interface name (see its `dev_valid_name`).
fn tap_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_TAP_NAME_LEN {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not interface names")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("it contains `/`, `:` or a space")
    } else {
        None
    }
}

/// Refuses two distinct interfaces that share a TAP or a MAC address.
pub(super) fn check_net_pair(a: &NetConfig, b: &NetConfig) -> Result<(), PrebootError> {
    let (ids_a, ids_b) = (a.id.clone(), b.id.clone());
    if a.tap == b.tap {
        let tap = a.tap.clone();
        return Err(PrebootError::DuplicateTap {
            a: ids_a,
            b: ids_b,
            tap,
        });
    }
    match (a.mac, b.mac) {
        (Some(x), Some(y)) if x == y => Err(PrebootError::DuplicateMac {
            a: ids_a,
            b: ids_b,
            mac: x.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Refuses a vsock device with a reserved context id or a socket path that
/// cannot be bound.
pub fn check_vsock(vsock: &VsockConfig) -> Result<(), PrebootError> {
    if vsock.guest_cid < MIN_GUEST_CID || vsock.guest_cid == u32::MAX {
        return Err(PrebootError::Cid {
            cid: vsock.guest_cid,
        });
    }
    check_uds_path(&vsock.uds_path)
}

/// Refuses a path where no Unix socket can be created: empty, too long, in
/// a directory that does not exist, or taken by something else.
pub fn check_uds_path(path: &Path) -> Result<(), PrebootError> {
    let len = path.as_os_str().len();
    if len == 0 {
        let what = "the vsock socket path".to_string();
        return Err(PrebootError::EmptyPath { what });
    }
    if len > MAX_UDS_PATH_LEN {
        let path = path.to_path_buf();
        return Err(PrebootError::UdsTooLong { path, len });
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent.filter(|p| !p.is_dir()) {
        let (path, parent) = (path.to_path_buf(), parent.to_path_buf());
        return Err(PrebootError::UdsParent { path, parent });
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(PrebootError::UdsNotASocket {
            path: path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// Checks the new host sides a restore is given: each interface named
/// once, with a valid TAP name and MAC address, and a usable vsock path.
pub fn check_overrides(nets: &[NetOverride], uds: Option<&Path>) -> Result<(), PrebootError> {
    for (i, o) in nets.iter().enumerate() {
        check_net(&NetConfig {
            id: o.iface_id.clone(),
            tap: o.host_dev_name.clone(),
            mac: o.guest_mac,
        })?;
        if nets[..i].iter().any(|e| e.iface_id == o.iface_id) {
            let id = o.iface_id.clone();
            return Err(PrebootError::DuplicateOverride { id });
        }
    }
    uds.map_or(Ok(()), check_uds_path)
}

/// Checks the new images a restore is given: each drive named once, each
/// image an existing file (its size and mode are checked against the
/// snapshot when the drive is restored).
pub fn check_drive_overrides(drives: &[DriveOverride]) -> Result<(), PrebootError> {
    for (i, o) in drives.iter().enumerate() {
        if drives[..i].iter().any(|e| e.drive_id == o.drive_id) {
            let id = o.drive_id.clone();
            return Err(PrebootError::DuplicateDriveOverride { id });
        }
        check_drive(&DriveConfig {
            id: o.drive_id.clone(),
            path: o.path_on_host.clone(),
            read_only: true,
        })?;
    }
    Ok(())
}

/// Checks every device of `config`, and that ids, TAPs and MAC addresses
/// are not shared.
pub fn check_devices(config: &MachineConfig) -> Result<(), PrebootError> {
    for (i, drive) in config.drives.iter().enumerate() {
        check_drive(drive)?;
        if config.drives[..i].iter().any(|d| d.id == drive.id) {
            let id = drive.id.clone();
            return Err(PrebootError::DuplicateId { kind: "drive", id });
        }
    }
    for (i, net) in config.nets.iter().enumerate() {
        check_net(net)?;
        for earlier in &config.nets[..i] {
            if earlier.id == net.id {
                let (kind, id) = ("network interface", net.id.clone());
                return Err(PrebootError::DuplicateId { kind, id });
            }
            check_net_pair(earlier, net)?;
        }
    }
    if let Some(vsock) = &config.vsock {
        check_vsock(vsock)?;
    }
    Ok(())
}

#[cfg(test)]
mod drive_override_tests {
    use super::*;

    #[test]
    fn drive_overrides_name_each_drive_once_and_an_existing_file() {
        let dir = std::env::temp_dir().join(format!("hiber-dov-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let img = dir.join("clone.img");
        fs::write(&img, [0u8; 512]).unwrap();
        let o = |id: &str, p: &Path| DriveOverride {
            drive_id: id.into(),
            path_on_host: p.to_path_buf(),
        };
        check_drive_overrides(&[o("drive0", &img), o("drive1", &img)]).unwrap();
        let twice = check_drive_overrides(&[o("drive0", &img), o("drive0", &img)]);
        assert!(twice
            .unwrap_err()
            .to_string()
            .contains("two drive overrides"));
        let missing = check_drive_overrides(&[o("drive0", &dir.join("nope.img"))]);
        assert!(missing.unwrap_err().to_string().contains("nope.img"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
