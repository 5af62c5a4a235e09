//! virtio-rng: an entropy source for the guest, fed from the host kernel's
//! random number generator (`getrandom`), so that the guest never waits for
//! entropy (which costs minutes where guest kernel code is emulated).
//!
//! The device has no configuration space and no state beyond its queue,
//! which the transport saves; [`RngState`] exists so that the snapshot says
//! explicitly that nothing else is kept.

use serde::{Deserialize, Serialize};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::{device_type, ActivateError, ActiveQueues, VirtioDevice, VIRTIO_F_VERSION_1};

/// The one request queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes given for one request; a larger buffer is filled in part,
/// as the specification allows.
pub const MAX_REQUEST: usize = 64 << 10;

/// What the entropy device saves besides its transport: nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {}

/// The entropy device.
pub struct Rng {
    active: Option<ActiveQueues>,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Self {
        Rng { active: None }
    }

    /// Rebuilds the device from its (empty) state.
    pub fn restore(_state: &RngState) -> Self {
        Self::new()
    }

    /// The device's state.
    pub fn save(&self) -> RngState {
        RngState {}
    }
}

/// Fills the writable buffers of one chain; returns the bytes written, or
/// why the chain was refused.
fn serve(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Result<u32, String> {
    let mut written = 0usize;
    let mut buf = vec![0u8; 4096];
    for desc in chain {
        if !desc.is_write_only() {
            return Err("a request buffer is device-readable; it must be writable".into());
        }
        let mut left = (desc.len() as usize).min(MAX_REQUEST - written);
        let mut addr = desc.addr();
        while left > 0 {
            let n = left.min(buf.len());
            getrandom(&mut buf[..n])?;
            mem.write_slice(&buf[..n], addr)
                .map_err(|e| format!("a request buffer is outside guest memory: {e}"))?;
            addr = addr.unchecked_add(n as u64);
            left -= n;
            written += n;
        }
        if written == MAX_REQUEST {
            break;
        }
    }
    Ok(written as u32)
}

fn getrandom(buf: &mut [u8]) -> Result<(), String> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable
        // slice; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("the host's getrandom failed: {e}"));
        }
        filled += n as usize;
    }
    Ok(())
}

fn drain(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let len = serve(mem, chain).unwrap_or_else(|why| {
            log::warn!("entropy: request {head} refused: {why}");
            0
        });
        if let Err(e) = queue.add_used(mem, head, len) {
            log::error!("entropy: the used ring is broken, the device stops: {e}");
            return used_any;
        }
        used_any = true;
    }
    used_any
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn name(&self) -> String {
        "entropy".into()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("entropy: write to configuration offset {offset} ignored (it has none)");
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
        if !active.queues[0].ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.active = Some(active);
        Ok(())
    }

    fn reset(&mut self) -> Option<ActiveQueues> {
        self.active.take()
    }

    fn queues(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|a| a.queues.as_slice())
    }

    fn process_queue(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if index != 0 {
            return;
        }
        let mem = active.mem.clone();
        if drain(&mut active.queues[0], &mem) {
            active.notify_used(0);
        }
    }
}

/// Feeds the device a request queue laid out from fuzz bytes; it must
/// neither panic nor hang, whatever the bytes.
#[cfg(any(test, feature = "test-utils"))]
pub fn fuzz_queue(data: &[u8]) {
    use super::test_utils::{activation, fuzz_layout, mock_queue, test_memory};

    let mem = test_memory();
    let mock = mock_queue(&mem, 0, 16);
    fuzz_layout(&mem, &mock, 16, data);
    let (active, _evt) = activation(&mem, &[&mock], VIRTIO_F_VERSION_1);
    let mut rng = Rng::new();
    if rng.activate(active).is_ok() {
        rng.process_queue(0);
    }
}

#[cfg(test)]
mod tests;
