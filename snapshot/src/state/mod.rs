//! The state file: vCPU, VM and device state as named, checksummed CBOR sections.

mod display;
mod error;
mod format;
mod reader;
mod writer;

pub use display::render_value;
pub use error::{Origin, StateError};
pub use format::STATE_FORMAT_VERSION;
pub use reader::{Section, StateFile};
pub use writer::SnapshotWriter;
