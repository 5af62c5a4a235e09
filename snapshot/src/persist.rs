//! The save/restore contract for every part of a VM that goes into a snapshot.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A part of the VM (a vCPU, the VM, a device) whose state can be saved into a
/// snapshot and rebuilt from it.
///
/// `save` captures everything that makes this object what it is as a plain,
/// serializable [`Persist::State`] value; `restore` builds a new object from such a
/// value plus whatever the new process has to supply that is not state (file
/// descriptors, a KVM VM handle, guest memory, event fds), passed as
/// [`Persist::ConstructorArgs`].
///
/// There are no default methods on purpose: a type that cannot be saved yet must say
/// so by returning an error that names it, never by silently saving nothing.
///
/// The state type is what goes into a state-file section
/// ([`crate::SnapshotWriter::add_section`]), so it should hold only data (no handles)
/// and keep its field names stable: renaming a field breaks reading older snapshots.
pub trait Persist: Sized {
    /// The serializable state of this object.
    type State: Serialize + DeserializeOwned;
    /// What a restore needs besides the state (handles, memory, configuration).
    type ConstructorArgs;
    /// The error `save` and `restore` return.
    type Error: std::error::Error;

    /// Captures the state of `self`. The VM must be paused while this runs.
    fn save(&self) -> Result<Self::State, Self::Error>;

    /// Builds a new object from `args` and a state captured by [`Persist::save`].
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}
