//! A port-I/O bus: routes guest `in`/`out` accesses to the device that owns the port.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest port I/O.
pub trait PioDevice: Send {
    /// A short name for logs and error messages.
    fn name(&self) -> &str;
    /// Fills `data` from the device; `offset` is relative to the base of the range the
    /// device was inserted at.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Hands `data` to the device; `offset` is relative to the base of its range.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A device shared between the bus and whoever else holds it (the VMM, for snapshots).
pub type SharedPioDevice = Arc<Mutex<dyn PioDevice>>;

/// Errors of [`PioBus::insert`].
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range is empty.
    #[error("cannot insert {name} at port {base:#x} with length 0: give it at least one port")]
    EmptyRange {
        /// The device that was refused.
        name: String,
        /// The base port asked for.
        base: u16,
    },
    /// The range runs past port 0xffff.
    #[error(
        "cannot insert {name} at port {base:#x} with length {len:#x}: the range ends past \
         port 0xffff"
    )]
    PastPortSpace {
        /// The device that was refused.
        name: String,
        /// The base port asked for.
        base: u16,
        /// The length asked for.
        len: u16,
    },
    /// The range overlaps the range of a device already on the bus.
    #[error(
        "cannot insert {name} at ports {base:#x}..{end:#x}: they overlap {other} at ports \
         {other_base:#x}..{other_end:#x}; pick a free range"
    )]
    Overlap {
        /// The device that was refused.
        name: String,
        /// The base port asked for.
        base: u16,
        /// One past the last port asked for.
        end: u32,
        /// The device already there.
        other: String,
        /// Its base port.
        other_base: u16,
        /// One past its last port.
        other_end: u32,
    },
}

#[derive(Clone)]
struct Range {
    len: u16,
    device: SharedPioDevice,
}

impl Range {
    fn end(&self, base: u16) -> u32 {
        u32::from(base) + u32::from(self.len)
    }
}

/// Maps port ranges `(base, len)` to devices. Cloning the bus shares the devices, so
/// every vCPU thread can hold its own copy.
#[derive(Clone, Default)]
pub struct PioBus {
    ranges: BTreeMap<u16, Range>,
}

impl PioBus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `dev` at ports `base..base + len`, refusing a range that is empty, runs
    /// past port 0xffff or overlaps a range already on the bus.
    pub fn insert(&mut self, base: u16, len: u16, dev: SharedPioDevice) -> Result<(), BusError> {
        let name = lock(&dev).name().to_string();
        let end = u32::from(base) + u32::from(len);
        if len == 0 {
            return Err(BusError::EmptyRange { name, base });
        }
        if end > 0x1_0000 {
            return Err(BusError::PastPortSpace { name, base, len });
        }
        if let Some((other_base, other)) = self.overlapping(base, end) {
            return Err(BusError::Overlap {
                name,
                base,
                end,
                other: lock(&other.device).name().to_string(),
                other_base,
                other_end: other.end(other_base),
            });
        }
        log::debug!("port bus: {name} at {base:#x}..{end:#x}");
        self.ranges.insert(base, Range { len, device: dev });
        Ok(())
    }

    /// Reads `data.len()` bytes at `port`. Returns false, leaving `data` untouched, when no
    /// device owns `port`.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((base, range)) => {
                lock(&range.device).read(port - base, data);
                true
            }
            None => false,
        }
    }

    /// Writes `data` at `port`. Returns false when no device owns `port`.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
            Some((base, range)) => {
                lock(&range.device).write(port - base, data);
                true
            }
            None => false,
        }
    }

    fn find(&self, port: u16) -> Option<(u16, &Range)> {
        let (&base, range) = self.ranges.range(..=port).next_back()?;
        (u32::from(port) < range.end(base)).then_some((base, range))
    }

    /// The first range on the bus that shares a port with `base..end`.
    fn overlapping(&self, base: u16, end: u32) -> Option<(u16, Range)> {
        let below = self.ranges.range(..=base).next_back();
        let above = self.ranges.range(base..).next();
        [below, above]
            .into_iter()
            .flatten()
            .find(|(&b, r)| u32::from(b) < end && u32::from(base) < r.end(b))
            .map(|(&b, r)| (b, r.clone()))
    }
}

/// Locks a device, carrying on if another thread panicked while holding it: device
/// state is plain registers that a panic cannot leave half-written in a harmful way.
fn lock(device: &SharedPioDevice) -> std::sync::MutexGuard<'_, dyn PioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every access so a test can see which device got it and at what offset.
    struct Recorder {
        name: String,
        accesses: Vec<(char, u16, usize)>,
    }

    impl PioDevice for Recorder {
        fn name(&self) -> &str {
            &self.name
        }
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            self.accesses.push(('r', offset, data.len()));
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.accesses.push(('w', offset, data.len()));
        }
    }

    fn recorder(name: &str) -> Arc<Mutex<Recorder>> {
        let accesses = Vec::new();
        Arc::new(Mutex::new(Recorder {
            name: name.to_string(),
            accesses,
        }))
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let mut bus = PioBus::new();
        bus.insert(0x3f8, 8, recorder("a")).unwrap();
        for (base, len) in [
            (0x3f8, 8),
            (0x3f0, 9),
            (0x3ff, 1),
            (0x3fa, 1),
            (0x300, 0x200),
        ] {
            let err = bus.insert(base, len, recorder("b")).unwrap_err();
            assert!(
                matches!(err, BusError::Overlap { .. }),
                "{base:#x}+{len}: {err}"
            );
        }
        bus.insert(0x3f0, 8, recorder("below")).unwrap();
        bus.insert(0x400, 1, recorder("above")).unwrap();
        let err = bus.insert(0x10, 0, recorder("c")).unwrap_err();
        assert!(matches!(err, BusError::EmptyRange { .. }));
        let err = bus.insert(0xfff0, 0x11, recorder("d")).unwrap_err();
        assert!(matches!(err, BusError::PastPortSpace { .. }));
        bus.insert(0xfff0, 0x10, recorder("top")).unwrap();
    }

    #[test]
    fn overlap_error_names_both_devices() {
        let mut bus = PioBus::new();
        bus.insert(0x60, 5, recorder("i8042")).unwrap();
        let msg = bus
            .insert(0x64, 2, recorder("intruder"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("intruder") && msg.contains("i8042"), "{msg}");
    }

    #[test]
    fn dispatches_with_relative_offsets() {
        let mut bus = PioBus::new();
        let a = recorder("a");
        let b = recorder("b");
        bus.insert(0x70, 2, a.clone()).unwrap();
        bus.insert(0x72, 2, b.clone()).unwrap();

        let mut data = [0u8; 1];
        assert!(bus.read(0x71, &mut data));
        assert_eq!(data, [1]);
        assert!(bus.write(0x72, &[1, 2]));
        assert!(bus.read(0x73, &mut data));

        assert_eq!(a.lock().unwrap().accesses, vec![('r', 1, 1)]);
        assert_eq!(b.lock().unwrap().accesses, vec![('w', 0, 2), ('r', 1, 1)]);
    }

    #[test]
    fn reports_unowned_ports() {
        let mut bus = PioBus::new();
        bus.insert(0x70, 2, recorder("a")).unwrap();
        let mut data = [0xaa];
        assert!(!bus.read(0x6f, &mut data));
        assert!(!bus.read(0x72, &mut data));
        assert!(!bus.write(0, &[0]));
        assert_eq!(data, [0xaa]);
    }
}
