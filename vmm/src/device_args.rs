//! The device flags of `hiber run` and `hiber restore`: comma-separated
//! `key=value` lists, as in `--drive path=disk.img,read-only=on`.
//!
//! These parsers only check the shape of each flag; whether the files,
//! interfaces and identifiers make a valid machine is checked by
//! [`crate::preboot`], the same checks the pre-boot API makes.
//!
//! A value cannot contain a comma: paths with commas are not supported.

use std::path::PathBuf;
use std::str::FromStr;

use crate::config::{DriveConfig, MacAddr, NetConfig, VsockConfig};
use crate::persist::{DriveOverride, NetOverride};

/// Why a device flag does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceArgError {
    /// An item is not `key=value`.
    #[error("`{item}` in --{flag} is not KEY=VALUE; for example --{flag} {example}")]
    NotKeyValue {
        flag: &'static str,
        item: String,
        example: &'static str,
    },
    /// A key the flag does not have.
    #[error("--{flag} has no key `{key}`: use {allowed}")]
    UnknownKey {
        flag: &'static str,
        key: String,
        allowed: &'static str,
    },
    /// The same key twice.
    #[error("--{flag} gives `{key}` twice: give it once")]
    Repeated { flag: &'static str, key: String },
    /// A required key is absent.
    #[error("--{flag} needs {key}=...; for example --{flag} {example}")]
    Missing {
        flag: &'static str,
        key: &'static str,
        example: &'static str,
    },
    /// A key with nothing after the `=`.
    #[error("{key}= in --{flag} is empty: give a value")]
    Empty { flag: &'static str, key: String },
    /// An on/off switch with another value.
    #[error("{key}={value} in --{flag} is not a switch: use on or off")]
    NotSwitch {
        flag: &'static str,
        key: &'static str,
        value: String,
    },
    /// A context id that is not a number.
    #[error("cid={value} in --vsock is not a number: give the guest's context id, 3 or more")]
    Cid { value: String },
    /// A MAC address that does not parse.
    #[error("--{flag}: {reason}")]
    Mac { flag: &'static str, reason: String },
}

const DRIVE_EXAMPLE: &str = "path=disk.img,read-only=on,id=data";
const NET_EXAMPLE: &str = "tap=tap0,mac=02:00:00:00:00:01,id=eth0";
const VSOCK_EXAMPLE: &str = "cid=3,uds=/run/vm.vsock";
const OVERRIDE_EXAMPLE: &str = "eth0=tap1,mac=02:00:00:00:00:02";

/// `--drive path=PATH[,read-only=on|off][,id=NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveArg {
    /// The raw image file.
    pub path: PathBuf,
    /// Whether the guest may only read it (default: off).
    pub read_only: bool,
    /// The drive's id; without one it is `drive<N>` by position.
    pub id: Option<String>,
}

/// `--net tap=NAME[,mac=MAC][,id=NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetArg {
    /// The host TAP interface.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: Option<MacAddr>,
    /// The interface's id; without one it is `eth<N>` by position.
    pub id: Option<String>,
}

/// `--vsock cid=N,uds=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockArg(pub VsockConfig);

/// `--net-override ID=TAP[,mac=MAC]`: a restored interface's new host side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetOverrideArg(pub NetOverride);

/// `--drive-override ID=PATH`: a restored drive's new image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveOverrideArg(pub DriveOverride);

impl FromStr for DriveOverrideArg {
    type Err = DeviceArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const FLAG: &str = "drive-override";
        let (drive_id, path) = s.split_once('=').ok_or(DeviceArgError::NotKeyValue {
            flag: FLAG,
            item: s.to_string(),
            example: "drive0=/srv/clone7.img",
        })?;
        if drive_id.is_empty() || path.is_empty() {
            let key = if drive_id.is_empty() { "ID" } else { drive_id };
            let key = key.to_string();
            return Err(DeviceArgError::Empty { flag: FLAG, key });
        }
        Ok(DriveOverrideArg(DriveOverride {
            drive_id: drive_id.to_string(),
            path_on_host: PathBuf::from(path),
        }))
    }
}

/// The `key=value` items of one flag, each key at most once.
struct Fields<'a> {
    flag: &'static str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    /// Splits `s` into items; `allowed` lists the keys, `shown` says them.
    fn parse(
        flag: &'static str,
        s: &'a str,
        allowed: &[&str],
        shown: &'static str,
        example: &'static str,
    ) -> Result<Self, DeviceArgError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in s.split(',') {
            let (key, value) = item.split_once('=').ok_or(DeviceArgError::NotKeyValue {
                flag,
                item: item.to_string(),
                example,
            })?;
            if !allowed.contains(&key) {
                return Err(DeviceArgError::UnknownKey {
                    flag,
                    key: key.to_string(),
                    allowed: shown,
                });
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                let key = key.to_string();
                return Err(DeviceArgError::Repeated { flag, key });
            }
            if value.is_empty() {
                let key = key.to_string();
                return Err(DeviceArgError::Empty { flag, key });
            }
            pairs.push((key, value));
        }
        Ok(Fields { flag, pairs })
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn require(&self, key: &'static str, ex: &'static str) -> Result<&'a str, DeviceArgError> {
        self.get(key).ok_or(DeviceArgError::Missing {
            flag: self.flag,
            key,
            example: ex,
        })
    }

    fn switch(&self, key: &'static str) -> Result<Option<bool>, DeviceArgError> {
        match self.get(key) {
            None => Ok(None),
            Some("on") => Ok(Some(true)),
            Some("off") => Ok(Some(false)),
            Some(other) => Err(DeviceArgError::NotSwitch {
                flag: self.flag,
                key,
                value: other.to_string(),
            }),
        }
    }

    fn mac(&self) -> Result<Option<MacAddr>, DeviceArgError> {
        self.get("mac")
            .map(|m| {
                m.parse().map_err(|reason| DeviceArgError::Mac {
                    flag: self.flag,
                    reason,
                })
            })
            .transpose()
    }
}

impl FromStr for DriveArg {
    type Err = DeviceArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let keys = ["path", "read-only", "id"];
        let f = Fields::parse("drive", s, &keys, "path, read-only and id", DRIVE_EXAMPLE)?;
        Ok(DriveArg {
            path: PathBuf::from(f.require("path", DRIVE_EXAMPLE)?),
            read_only: f.switch("read-only")?.unwrap_or(false),
            id: f.get("id").map(str::to_string),
        })
    }
}

impl FromStr for NetArg {
    type Err = DeviceArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let keys = ["tap", "mac", "id"];
        let f = Fields::parse("net", s, &keys, "tap, mac and id", NET_EXAMPLE)?;
        Ok(NetArg {
            tap: f.require("tap", NET_EXAMPLE)?.to_string(),
            mac: f.mac()?,
            id: f.get("id").map(str::to_string),
        })
    }
}

impl FromStr for VsockArg {
    type Err = DeviceArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let f = Fields::parse("vsock", s, &["cid", "uds"], "cid and uds", VSOCK_EXAMPLE)?;
        let cid = f.require("cid", VSOCK_EXAMPLE)?;
        let guest_cid = cid.parse().map_err(|_| DeviceArgError::Cid {
            value: cid.to_string(),
        })?;
        Ok(VsockArg(VsockConfig {
            guest_cid,
            uds_path: PathBuf::from(f.require("uds", VSOCK_EXAMPLE)?),
        }))
    }
}

impl FromStr for NetOverrideArg {
    type Err = DeviceArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const FLAG: &str = "net-override";
        let (head, rest) = match s.split_once(',') {
            Some((head, rest)) => (head, Some(rest)),
            None => (s, None),
        };
        let (iface_id, tap) = head.split_once('=').ok_or(DeviceArgError::NotKeyValue {
            flag: FLAG,
            item: head.to_string(),
            example: OVERRIDE_EXAMPLE,
        })?;
        if iface_id.is_empty() || tap.is_empty() {
            let key = if iface_id.is_empty() { "ID" } else { iface_id };
            let key = key.to_string();
            return Err(DeviceArgError::Empty { flag: FLAG, key });
        }
        let guest_mac = match rest {
            Some(rest) => {
                Fields::parse(FLAG, rest, &["mac"], "ID=TAP and mac", OVERRIDE_EXAMPLE)?.mac()?
            }
            None => None,
        };
        Ok(NetOverrideArg(NetOverride {
            iface_id: iface_id.to_string(),
            host_dev_name: tap.to_string(),
            guest_mac,
        }))
    }
}

/// The drives of the command line, in order; a drive without an id gets
/// `drive<N>`, N being its position among the `--drive` flags.
pub fn drive_configs(args: &[DriveArg]) -> Vec<DriveConfig> {
    let id = |i: usize, a: &DriveArg| a.id.clone().unwrap_or_else(|| format!("drive{i}"));
    args.iter()
        .enumerate()
        .map(|(i, a)| DriveConfig {
            id: id(i, a),
            path: a.path.clone(),
            read_only: a.read_only,
        })
        .collect()
}

/// The network interfaces of the command line, in order; one without an
/// id gets `eth<N>`, N being its position among the `--net` flags.
pub fn net_configs(args: &[NetArg]) -> Vec<NetConfig> {
    let id = |i: usize, a: &NetArg| a.id.clone().unwrap_or_else(|| format!("eth{i}"));
    args.iter()
        .enumerate()
        .map(|(i, a)| NetConfig {
            id: id(i, a),
            tap: a.tap.clone(),
            mac: a.mac,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: FromStr<Err = DeviceArgError> + std::fmt::Debug>(s: &str) -> String {
        s.parse::<T>().unwrap_err().to_string()
    }

    #[test]
    fn drives_parse_with_defaults() {
        let d: DriveArg = "path=/img/a.raw".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/img/a.raw"));
        assert!(!d.read_only);
        assert_eq!(d.id, None);
        let d: DriveArg = "read-only=on,id=data,path=b.img".parse().unwrap();
        assert_eq!((d.read_only, d.id.as_deref()), (true, Some("data")));
        let d: DriveArg = "path=c,read-only=off".parse().unwrap();
        assert!(!d.read_only);
    }

    #[test]
    fn bad_drives_are_refused_with_the_fix() {
        assert!(err::<DriveArg>("read-only=on").contains("needs path="));
        assert!(err::<DriveArg>("path=a,ro=on").contains("no key `ro`"));
        assert!(err::<DriveArg>("path=a,read-only=yes").contains("use on or off"));
        assert!(err::<DriveArg>("path=a,path=b").contains("`path` twice"));
        assert!(err::<DriveArg>("path=").contains("path= in --drive is empty"));
        assert!(err::<DriveArg>("disk.img").contains("not KEY=VALUE"));
        assert!(err::<DriveArg>("path=a,").contains("not KEY=VALUE"));
    }

    #[test]
    fn nets_parse_and_refuse() {
        let n: NetArg = "tap=tap0,mac=02:00:00:00:00:01".parse().unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac.unwrap().to_string(), "02:00:00:00:00:01");
        assert_eq!(n.id, None);
        let n: NetArg = "id=uplink,tap=t1".parse().unwrap();
        assert_eq!((n.id.as_deref(), n.mac), (Some("uplink"), None));
        assert!(err::<NetArg>("mac=02:00:00:00:00:01").contains("needs tap="));
        assert!(err::<NetArg>("tap=t,mac=01:00:00:00:00:01").contains("multicast"));
        assert!(err::<NetArg>("tap=t,mac=zz").contains("six hex bytes"));
        assert!(err::<NetArg>("tap=t,host=x").contains("use tap, mac and id"));
    }

    #[test]
    fn vsock_parses_and_refuses() {
        let VsockArg(v) = "cid=7,uds=/run/v.sock".parse().unwrap();
        assert_eq!((v.guest_cid, v.uds_path), (7, PathBuf::from("/run/v.sock")));
        assert!(err::<VsockArg>("cid=x,uds=a").contains("cid=x in --vsock is not a number"));
        assert!(err::<VsockArg>("cid=-3,uds=a").contains("not a number"));
        assert!(err::<VsockArg>("uds=a").contains("needs cid="));
        assert!(err::<VsockArg>("cid=3").contains("needs uds="));
    }

    #[test]
    fn net_overrides_parse_and_refuse() {
        let DriveOverrideArg(d) = "drive0=/srv/c.img".parse().unwrap();
        assert_eq!(
            (d.drive_id.as_str(), d.path_on_host.to_str()),
            ("drive0", Some("/srv/c.img"))
        );
        assert!(err::<DriveOverrideArg>("drive0").contains("not KEY=VALUE"));
        assert!(err::<DriveOverrideArg>("=x.img").contains("empty"));
        let NetOverrideArg(o) = "eth0=tap7".parse().unwrap();
        assert_eq!(
            (o.iface_id.as_str(), o.host_dev_name.as_str()),
            ("eth0", "tap7")
        );
        assert_eq!(o.guest_mac, None);
        let NetOverrideArg(o) = "eth1=tap8,mac=02:00:00:00:00:09".parse().unwrap();
        assert_eq!(o.guest_mac.unwrap().to_string(), "02:00:00:00:00:09");
        assert!(err::<NetOverrideArg>("eth0").contains("not KEY=VALUE"));
        assert!(err::<NetOverrideArg>("eth0=").contains("eth0= in --net-override is empty"));
        assert!(err::<NetOverrideArg>("=tap0").contains("ID= in --net-override is empty"));
        assert!(err::<NetOverrideArg>("eth0=t,tap=u").contains("no key `tap`"));
    }

    #[test]
    fn ids_default_by_position() {
        let drives: Vec<DriveArg> = ["path=a", "path=b,id=data", "path=c"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ids: Vec<String> = drive_configs(&drives).into_iter().map(|d| d.id).collect();
        assert_eq!(ids, ["drive0", "data", "drive2"]);
        let nets: Vec<NetArg> = ["tap=t0", "tap=t1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ids: Vec<String> = net_configs(&nets).into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["eth0", "eth1"]);
    }
}
