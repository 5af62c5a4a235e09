use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;
use crate::virtio::test_utils::test_memory;
use crate::virtio::{ActivateError, ActiveQueues};

/// A device with two queues that records what happens to it.
#[derive(Default)]
struct Probe {
    active: Option<ActiveQueues>,
    processed: Vec<usize>,
    config: [u8; 8],
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        42
    }
    fn name(&self) -> String {
        "probe".into()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = *self.config.get(offset as usize + i).unwrap_or(&0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config[offset as usize] = data[0];
    }
    fn activate(&mut self, active: ActiveQueues) -> Result<(), ActivateError> {
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
        self.processed.push(index);
    }
}

struct Rig {
    t: MmioTransport<Probe>,
    activate: EventFd,
    notify: Vec<EventFd>,
}

fn evt() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

fn rig() -> Rig {
    let activate = evt();
    let notify = vec![evt(), evt()];
    let clones = notify.iter().map(|e| e.try_clone().unwrap()).collect();
    let t = MmioTransport::new(
        Probe::default(),
        test_memory(),
        Interrupt::new(evt(), 0),
        activate.try_clone().unwrap(),
        clones,
    );
    Rig {
        t,
        activate,
        notify,
    }
}

fn read(t: &mut MmioTransport<Probe>, offset: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(offset), &mut b);
    u32::from_le_bytes(b)
}

fn write(t: &mut MmioTransport<Probe>, offset: u32, v: u32) {
    t.write(u64::from(offset), &v.to_le_bytes());
}

/// Why restoring a probe device from `state` is refused.
fn restore_refusal(state: &MmioState) -> String {
    let restored = MmioTransport::restore(
        Probe::default(),
        test_memory(),
        evt(),
        evt(),
        vec![evt(), evt()],
        state,
    );
    restored.err().expect("the restore is refused").to_string()
}

/// What the Linux driver does, up to DRIVER_OK, with queue 0 at `base`.
fn drive_to_ok(t: &mut MmioTransport<Probe>, features_high: u32) {
    write(t, VIRTIO_MMIO_STATUS, 1);
    write(t, VIRTIO_MMIO_STATUS, 3);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, features_high);
    write(t, VIRTIO_MMIO_STATUS, 3 | VIRTIO_CONFIG_S_FEATURES_OK);
    for (q, base) in [(0u32, 0x1_0000u32), (1, 0x2_0000)] {
        write(t, VIRTIO_MMIO_QUEUE_SEL, q);
        write(t, VIRTIO_MMIO_QUEUE_NUM, 8);
        write(t, VIRTIO_MMIO_QUEUE_DESC_LOW, base);
        write(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x1000);
        write(t, VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x2000);
        write(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }
    write(t, VIRTIO_MMIO_STATUS, 3 | VIRTIO_CONFIG_S_FEATURES_OK | 4);
}

#[test]
fn identification_registers_say_modern_virtio() {
    let mut r = rig();
    assert_eq!(read(&mut r.t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
    assert_eq!(read(&mut r.t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read(&mut r.t, VIRTIO_MMIO_DEVICE_ID), 42);
    write(&mut r.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(read(&mut r.t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
    write(&mut r.t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(read(&mut r.t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
    write(&mut r.t, VIRTIO_MMIO_QUEUE_SEL, 7);
    assert_eq!(read(&mut r.t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
}

#[test]
fn driver_ok_activates_with_the_programmed_queues() {
    let mut r = rig();
    drive_to_ok(&mut r.t, 1);
    assert!(r.t.is_active());
    assert_eq!(r.activate.read().unwrap(), 1);
    let q = &r.t.device().queues().unwrap()[1];
    assert_eq!(q.desc_table(), 0x2_0000);
    assert_eq!(q.size(), 8);
    assert_eq!(
        r.t.device().active.as_ref().unwrap().acked_features,
        VIRTIO_F_VERSION_1
    );
}

#[test]
fn a_driver_without_version_1_does_not_get_features_ok() {
    let mut r = rig();
    drive_to_ok(&mut r.t, 0);
    assert_eq!(
        read(&mut r.t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    assert!(!r.t.is_active());
}

#[test]
fn unoffered_features_are_refused() {
    let mut r = rig();
    write(&mut r.t, VIRTIO_MMIO_STATUS, 3);
    write(&mut r.t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 5);
    write(&mut r.t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write(&mut r.t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    write(
        &mut r.t,
        VIRTIO_MMIO_STATUS,
        3 | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    assert_eq!(read(&mut r.t, VIRTIO_MMIO_STATUS), 3);
}

#[test]
fn queue_registers_are_frozen_after_driver_ok() {
    let mut r = rig();
    drive_to_ok(&mut r.t, 1);
    write(&mut r.t, VIRTIO_MMIO_QUEUE_SEL, 0);
    write(&mut r.t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x9000);
    assert_eq!(r.t.save().queues[0].desc_table, 0x1_0000);
}

#[test]
fn a_queue_outside_guest_memory_sets_needs_reset() {
    let mut r = rig();
    write(&mut r.t, VIRTIO_MMIO_STATUS, 3);
    write(&mut r.t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write(&mut r.t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    write(
        &mut r.t,
        VIRTIO_MMIO_STATUS,
        3 | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    write(&mut r.t, VIRTIO_MMIO_QUEUE_NUM, 8);
    write(&mut r.t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x4000_0000);
    write(&mut r.t, VIRTIO_MMIO_QUEUE_READY, 1);
    write(
        &mut r.t,
        VIRTIO_MMIO_STATUS,
        3 | VIRTIO_CONFIG_S_FEATURES_OK | 4,
    );
    assert!(!r.t.is_active());
    let status = read(&mut r.t, VIRTIO_MMIO_STATUS);
    assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_ne!(
        read(&mut r.t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        0
    );
}

#[test]
fn a_notify_register_write_signals_the_queue_eventfd() {
    let mut r = rig();
    drive_to_ok(&mut r.t, 1);
    write(&mut r.t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(r.notify[1].read().unwrap(), 1);
    write(&mut r.t, VIRTIO_MMIO_QUEUE_NOTIFY, 9);
}

#[test]
fn status_zero_resets_the_device() {
    let mut r = rig();
    drive_to_ok(&mut r.t, 1);
    r.t.interrupt().signal_used_queue();
    write(&mut r.t, VIRTIO_MMIO_STATUS, 0);
    assert!(!r.t.is_active());
    assert!(r.t.device().active.is_none());
    assert_eq!(read(&mut r.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(read(&mut r.t, VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn interrupt_ack_clears_status_bits() {
    let mut r = rig();
    r.t.interrupt().signal_used_queue();
    assert_eq!(
        read(&mut r.t, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    write(&mut r.t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(read(&mut r.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn configuration_space_is_the_devices() {
    let mut r = rig();
    r.t.write(0x100 + 3, &[9]);
    let mut b = [0u8; 4];
    r.t.read(0x100, &mut b);
    assert_eq!(b, [0, 0, 0, 9]);
}

#[test]
fn an_active_transport_round_trips_and_restarts_its_device() {
    let mut r = rig();
    drive_to_ok(&mut r.t, 1);
    r.t.interrupt().signal_used_queue();
    let state = r.t.save();
    let irq = evt();
    let back = MmioTransport::restore(
        Probe::default(),
        test_memory(),
        irq.try_clone().unwrap(),
        evt(),
        vec![evt(), evt()],
        &state,
    )
    .unwrap();
    assert!(back.is_active());
    assert_eq!(back.save(), state);
    back.replay_pending_interrupt();
    assert_eq!(irq.read().unwrap(), 1);
    let q = &back.device().queues().unwrap()[0];
    assert_eq!(q.avail_ring(), GuestAddress(0x1_1000).0);
}

#[test]
fn a_state_for_another_queue_count_is_refused() {
    let mut state = rig().t.save();
    state.queues.pop();
    let err = restore_refusal(&state);
    assert!(
        err.contains("has 1 queues for the probe device, which has 2"),
        "{err}"
    );
}

#[test]
fn a_state_with_features_the_device_lacks_is_refused() {
    let mut r = rig();
    drive_to_ok(&mut r.t, 1);
    let mut state = r.t.save();
    state.acked_features |= 1 << 40;
    let err = restore_refusal(&state);
    assert!(err.contains("accepted features 0x10100000000"), "{err}");
}
