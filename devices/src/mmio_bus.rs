//! An MMIO bus: routes the guest's memory-mapped I/O exits to the device
//! whose window holds the address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest MMIO.
pub trait MmioDevice: Send {
    /// A short name for logs and errors.
    fn name(&self) -> String;
    /// Fills `data`; `offset` is relative to the device's window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Takes `data`; `offset` is relative to the device's window.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and the VMM (which saves it).
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

/// Why a device cannot go on the bus.
#[derive(Debug, thiserror::Error)]
pub enum MmioBusError {
    /// The window overlaps another device's, or is empty.
    #[error(
        "cannot place {name} at {base:#x} (length {len:#x}): the window is empty or overlaps \
         {other}"
    )]
    Overlap {
        /// The device refused.
        name: String,
        /// Its base address.
        base: u64,
        /// Its length.
        len: u64,
        /// The device already there ("nothing" for an empty window).
        other: String,
    },
}

/// Maps address windows `(base, len)` to devices; clones share the devices.
#[derive(Clone, Default)]
pub struct MmioBus {
    windows: BTreeMap<u64, (u64, SharedMmioDevice)>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `dev` at `base..base + len`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: SharedMmioDevice,
    ) -> Result<(), MmioBusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let clash = match end {
            None => Some("nothing".to_string()),
            Some(end) => self
                .windows
                .range(..end)
                .next_back()
                .filter(|(b, (l, _))| **b + *l > base)
                .map(|(_, (_, d))| d.lock().unwrap().name()),
        };
        if let Some(other) = clash {
            let name = dev.lock().unwrap().name();
            return Err(MmioBusError::Overlap {
                name,
                base,
                len,
                other,
            });
        }
        self.windows.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedMmioDevice)> {
        let (base, (len, dev)) = self.windows.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Reads at `addr`; false when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock().unwrap().read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes at `addr`; false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock().unwrap().write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);

    impl MmioDevice for Echo {
        fn name(&self) -> String {
            format!("echo{}", self.0)
        }
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn echo(v: u8) -> SharedMmioDevice {
        Arc::new(Mutex::new(Echo(v)))
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x1000, echo(1)).unwrap();
        bus.insert(0x2000, 0x1000, echo(10)).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x1003, &mut b));
        assert_eq!(b[0], 4);
        assert!(bus.read(0x2000, &mut b));
        assert_eq!(b[0], 10);
        assert!(!bus.read(0x3000, &mut b));
        assert!(!bus.read(0xfff, &mut b));
        assert!(bus.write(0x2fff, &[7]));
        bus.read(0x2000, &mut b);
        assert_eq!(b[0], 7);
    }

    #[test]
    fn overlapping_and_empty_windows_are_refused() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x1000, echo(1)).unwrap();
        let err = bus.insert(0x1800, 0x1000, echo(2)).unwrap_err().to_string();
        assert!(err.contains("overlaps echo1"), "{err}");
        assert!(bus.insert(0x800, 0x801, echo(3)).is_err());
        assert!(bus.insert(0x5000, 0, echo(4)).is_err());
        bus.insert(0x2000, 0x1000, echo(5)).unwrap();
    }
}
