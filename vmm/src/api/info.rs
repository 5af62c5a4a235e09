//! The body of `GET /`: who this instance is and what state it is in.

use serde::{Deserialize, Serialize};

/// The `app_name` every Hiber instance reports.
pub const APP_NAME: &str = "hiber";

/// The run state reported by `GET /`, spelled as Firecracker spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRunState {
    /// No guest has been booted or restored yet.
    #[serde(rename = "Not started")]
    NotStarted,
    /// The vCPUs are running.
    Running,
    /// The vCPUs are stopped; a snapshot may be taken.
    Paused,
}

/// Instance information, Firecracker's `InstanceInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInfo {
    /// The instance identifier chosen at start.
    pub id: String,
    /// The run state.
    pub state: VmRunState,
    /// The version of the Hiber build.
    pub vmm_version: String,
    /// Always [`APP_NAME`].
    pub app_name: String,
}

impl InstanceInfo {
    /// Information for instance `id` in `state`, with this build's version.
    pub fn new(id: impl Into<String>, state: VmRunState) -> Self {
        InstanceInfo {
            id: id.into(),
            state,
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            app_name: APP_NAME.to_string(),
        }
    }

    /// The JSON body for `GET /`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "state": self.state,
            "vmm_version": self.vmm_version,
            "app_name": self.app_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_spelled_like_firecracker() {
        let json = InstanceInfo::new("vm0", VmRunState::NotStarted).to_json();
        assert_eq!(json["state"], "Not started");
        assert_eq!(json["app_name"], "hiber");
        assert_eq!(json["id"], "vm0");
        assert_eq!(json["vmm_version"], env!("CARGO_PKG_VERSION"));
        let paused = InstanceInfo::new("vm0", VmRunState::Paused).to_json();
        assert_eq!(paused["state"], "Paused");
    }

    #[test]
    fn the_json_reads_back() {
        let info = InstanceInfo::new("a", VmRunState::Running);
        let back: InstanceInfo = serde_json::from_value(info.to_json()).unwrap();
        assert_eq!(back, info);
    }
}
