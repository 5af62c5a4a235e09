use std::os::unix::fs::FileExt;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::virtio::test_utils::{activation, mock_queue, test_memory, used_count, used_entry};

/// The scratch image's size: 256 sectors.
const DISK_SECTORS: u64 = 256;
const HEADER: u64 = 0x2_0000;
const STATUS: u64 = 0x2_1000;
const DATA: u64 = 0x3_0000;
/// Written to the status byte before a request, to see whether it changed.
const UNTOUCHED: u8 = 0xee;
const R: u32 = 0;
const W: u32 = VRING_DESC_F_WRITE;

/// A scratch image whose byte at offset `i` is `i % 251` (no two nearby
/// sectors are alike).
fn image() -> TempFile {
    let f = TempFile::new_with_prefix(std::env::temp_dir().join("hiber-block-test")).unwrap();
    let bytes: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE)
        .map(|i| (i % 251) as u8)
        .collect();
    f.as_file().write_all_at(&bytes, 0).unwrap();
    f
}

fn image_bytes(image: &TempFile, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    image.as_file().read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// A chain of descriptors `(addr, len, flags)` linked in order from index
/// `first`.
fn chain(first: u16, parts: &[(u64, u32, u32)]) -> Vec<RawDescriptor> {
    let last = parts.len() - 1;
    let link = |(i, &(addr, len, flags)): (usize, &(u64, u32, u32))| {
        let (flags, next) = match i == last {
            true => (flags, 0),
            false => (flags | VRING_DESC_F_NEXT, first + i as u16 + 1),
        };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    };
    parts.iter().enumerate().map(link).collect()
}

/// Writes a request header and presets the status byte.
fn header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&request_type.to_le_bytes());
    raw[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(HEADER)).unwrap();
    mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
}

/// Header, the given data buffers, status.
fn request(data: &[(u64, u32, u32)]) -> Vec<(u64, u32, u32)> {
    let mut parts = vec![(HEADER, 16, R)];
    parts.extend_from_slice(data);
    parts.push((STATUS, 1, W));
    parts
}

fn status(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

fn active_block(
    mem: &GuestMemoryMmap,
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    block: Block,
) -> (Block, EventFd) {
    let mut block = block;
    let (active, irq) = activation(mem, &[mock], block.avail_features());
    block.activate(active).unwrap();
    (block, irq)
}

/// Runs one chain on a fresh drive over `image`; returns the used entry's
/// length and the status byte.
fn run(image: &TempFile, read_only: bool, parts: &[(u64, u32, u32)]) -> (u32, u8) {
    let mem = test_memory();
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let mock = mock_queue(&mem, 0, 256);
    mock.add_desc_chains(&chain(0, parts), 0).unwrap();
    let block = Block::new("drive0", image.as_path(), read_only).unwrap();
    let (mut block, _irq) = active_block(&mem, &mock, block);
    block.process_queue(0);
    assert_eq!(used_count(&mock), 1, "every chain is returned");
    (used_entry(&mock, 0).1, status(&mem))
}

/// Like [`run`], with the header written first into the same memory.
fn run_request(
    image: &TempFile,
    read_only: bool,
    request_type: u32,
    sector: u64,
    data: &[(u64, u32, u32)],
) -> (u32, u8, GuestMemoryMmap) {
    let mem = test_memory();
    header(&mem, request_type, sector);
    let mock = mock_queue(&mem, 0, 256);
    mock.add_desc_chains(&chain(0, &request(data)), 0).unwrap();
    let block = Block::new("drive0", image.as_path(), read_only).unwrap();
    let (mut block, _irq) = active_block(&mem, &mock, block);
    block.process_queue(0);
    assert_eq!(used_count(&mock), 1, "every chain is returned");
    let (len, st) = (used_entry(&mock, 0).1, status(&mem));
    (len, st, mem)
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn a_read_fills_guest_buffers_from_the_image() {
    let img = image();
    let data = [(DATA, 512, W), (DATA + 0x1000, 1024, W)];
    let (len, st, mem) = run_request(&img, false, VIRTIO_BLK_T_IN, 2, &data);
    assert_eq!((len, st), (1536 + 1, OK));
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, image_bytes(&img, 1024, 512));
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, image_bytes(&img, 1536, 1024));
}

#[test]
fn a_write_reaches_the_image() {
    let img = image();
    let mem = test_memory();
    header(&mem, VIRTIO_BLK_T_OUT, 5);
    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    mem.write_slice(&[0xcd; 512], GuestAddress(DATA + 0x800))
        .unwrap();
    let mock = mock_queue(&mem, 0, 16);
    let parts = request(&[(DATA, 512, R), (DATA + 0x800, 512, R)]);
    mock.add_desc_chains(&chain(0, &parts), 0).unwrap();
    let block = Block::new("drive0", img.as_path(), false).unwrap();
    let (mut block, irq) = active_block(&mem, &mock, block);
    block.process_queue(0);

    assert_eq!(used_entry(&mock, 0), (0, 1), "only the status is written");
    assert_eq!(status(&mem), OK);
    assert_eq!(image_bytes(&img, 5 * 512, 512), vec![0xab; 512]);
    assert_eq!(image_bytes(&img, 6 * 512, 512), vec![0xcd; 512]);
    assert_eq!(image_bytes(&img, 4 * 512, 512), {
        let base = 4 * 512u64;
        (base..base + 512)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
    });
    assert_eq!(irq.read().unwrap(), 1, "the guest is interrupted");
}

#[test]
fn several_requests_of_one_notification_are_all_served() {
    let img = image();
    let mem = test_memory();
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let mock = mock_queue(&mem, 0, 16);
    let mut descs = chain(0, &request(&[(DATA, 512, W)]));
    descs.extend(chain(3, &request(&[(DATA + 0x1000, 512, W)])));
    mock.add_desc_chains(&descs, 0).unwrap();
    let block = Block::new("drive0", img.as_path(), false).unwrap();
    let (mut block, _irq) = active_block(&mem, &mock, block);
    block.process_queue(0);
    assert_eq!(used_count(&mock), 2);
    assert_eq!(used_entry(&mock, 0), (0, 513));
    assert_eq!(used_entry(&mock, 1), (3, 513));
}

#[test]
fn a_flush_succeeds() {
    let img = image();
    let (len, st, _) = run_request(&img, false, VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!((len, st), (1, OK));
}

#[test]
fn get_id_returns_the_drive_id_padded_or_cut_to_20_bytes() {
    let img = image();
    let mem = test_memory();
    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    mem.write_slice(&[0xff; 20], GuestAddress(DATA)).unwrap();
    let mock = mock_queue(&mem, 0, 16);
    mock.add_desc_chains(&chain(0, &request(&[(DATA, 20, W)])), 0)
        .unwrap();
    let block = Block::new("data", img.as_path(), false).unwrap();
    let (mut block, _irq) = active_block(&mem, &mock, block);
    block.process_queue(0);
    assert_eq!(used_entry(&mock, 0).1, 21);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..4], b"data");
    assert_eq!(id[4..], [0u8; 16]);

    let long = "a-drive-id-longer-than-twenty-bytes";
    let block = Block::new(long, img.as_path(), false).unwrap();
    let mem = test_memory();
    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    let mock = mock_queue(&mem, 0, 16);
    mock.add_desc_chains(&chain(0, &request(&[(DATA, 20, W)])), 0)
        .unwrap();
    let (mut block, _irq) = active_block(&mem, &mock, block);
    block.process_queue(0);
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, &long.as_bytes()[..20]);
}

#[test]
fn an_unknown_request_type_is_unsupported() {
    let img = image();
    let (len, st, _) = run_request(&img, false, 11, 0, &[(DATA, 512, R)]);
    assert_eq!((len, st), (1, VIRTIO_BLK_S_UNSUPP as u8));
}

#[test]
fn a_read_only_drive_offers_ro_and_refuses_writes() {
    let img = image();
    let block = Block::new("ro", img.as_path(), true).unwrap();
    assert_ne!(block.avail_features() & 1 << VIRTIO_BLK_F_RO, 0);
    let rw = Block::new("rw", img.as_path(), false).unwrap();
    assert_eq!(rw.avail_features() & 1 << VIRTIO_BLK_F_RO, 0);

    let before = image_bytes(&img, 0, 512);
    let (len, st, _) = run_request(&img, true, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, R)]);
    assert_eq!((len, st), (1, IOERR));
    assert_eq!(image_bytes(&img, 0, 512), before, "the image is unchanged");

    let (len, st, _) = run_request(&img, true, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]);
    assert_eq!((len, st), (513, OK), "reads still work");
}

#[test]
fn sectors_beyond_the_disk_are_refused() {
    let img = image();
    let last = DISK_SECTORS - 1;
    let (len, st, _) = run_request(&img, false, VIRTIO_BLK_T_IN, last, &[(DATA, 1024, W)]);
    assert_eq!((len, st), (1, IOERR), "one sector past the end");
    let (_, st, _) = run_request(&img, false, VIRTIO_BLK_T_IN, last, &[(DATA, 512, W)]);
    assert_eq!(st, OK, "the last sector itself is fine");
    let (_, st, _) = run_request(&img, false, VIRTIO_BLK_T_OUT, u64::MAX, &[(DATA, 512, R)]);
    assert_eq!(st, IOERR, "a sector number that overflows");
}

#[test]
fn data_that_is_not_whole_sectors_is_refused() {
    let img = image();
    let (len, st, _) = run_request(&img, false, VIRTIO_BLK_T_IN, 0, &[(DATA, 100, W)]);
    assert_eq!((len, st), (1, IOERR));
}

#[test]
fn a_looping_chain_is_returned_untouched() {
    let img = image();
    let mem = test_memory();
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let mock = mock_queue(&mem, 0, 16);
    let flags = (VRING_DESC_F_NEXT | W) as u16;
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(
            HEADER,
            16,
            VRING_DESC_F_NEXT as u16,
            1,
        )),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, flags, 0)),
    ];
    mock.add_desc_chains(&descs, 0).unwrap();
    let block = Block::new("drive0", img.as_path(), false).unwrap();
    let (mut block, _irq) = active_block(&mem, &mock, block);
    block.process_queue(0);
    assert_eq!(used_count(&mock), 1, "the loop ends");
    assert_eq!(used_entry(&mock, 0), (0, 0));
    assert_eq!(status(&mem), UNTOUCHED);
}

#[test]
fn a_chain_linking_past_the_table_is_returned_untouched() {
    let img = image();
    let mem = test_memory();
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let mock = mock_queue(&mem, 0, 16);
    let descs = [RawDescriptor::from(SplitDescriptor::new(
        HEADER,
        16,
        VRING_DESC_F_NEXT as u16,
        200,
    ))];
    mock.add_desc_chains(&descs, 0).unwrap();
    let block = Block::new("drive0", img.as_path(), false).unwrap();
    let (mut block, _irq) = active_block(&mem, &mock, block);
    block.process_queue(0);
    assert_eq!(used_entry(&mock, 0), (0, 0));
}

#[test]
fn buffers_outside_guest_memory_are_refused() {
    let img = image();
    let outside = 0x10_0000 - 256;
    let (len, st, _) = run_request(&img, false, VIRTIO_BLK_T_IN, 0, &[(outside, 512, W)]);
    assert_eq!((len, st), (1, IOERR), "data running off the end of RAM");
    let (_, st, _) = run_request(&img, false, VIRTIO_BLK_T_OUT, 0, &[(1 << 40, 512, R)]);
    assert_eq!(st, IOERR, "data far outside RAM");

    let parts = [(1 << 40, 16, R), (DATA, 512, W), (STATUS, 1, W)];
    let mem_status = run(&img, false, &parts);
    assert_eq!(mem_status.0, 1, "header outside RAM: the status is written");
    let parts = [(HEADER, 16, R), (DATA, 512, W), (1 << 40, 1, W)];
    let (len, _) = run(&img, false, &parts);
    assert_eq!(len, 0, "status outside RAM: returned with nothing written");
}

#[test]
fn a_chain_with_too_many_descriptors_is_refused() {
    let img = image();
    let data: Vec<_> = (0..SEG_MAX as u64 + 1)
        .map(|i| (DATA + i * 512, 512, W))
        .collect();
    let (len, st, _) = run_request(&img, false, VIRTIO_BLK_T_IN, 0, &data);
    assert_eq!((len, st), (1, IOERR));

    let data: Vec<_> = (0..SEG_MAX as u64)
        .map(|i| (DATA + i * 512, 512, W))
        .collect();
    let (_, st, _) = run_request(&img, false, VIRTIO_BLK_T_IN, 0, &data);
    assert_eq!(st, OK, "seg_max data descriptors are fine");
}

#[test]
fn a_request_larger_than_the_limit_is_refused() {
    let img = image();
    let too_big = (MAX_DATA + SECTOR_SIZE) as u32;
    let (len, st, _) = run_request(&img, false, VIRTIO_BLK_T_IN, 0, &[(DATA, too_big, W)]);
    assert_eq!((len, st), (1, IOERR));
}

#[test]
fn data_buffers_in_the_wrong_direction_are_refused() {
    let img = image();
    let before = image_bytes(&img, 0, 512);
    let (len, st, _) = run_request(&img, false, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, R)]);
    assert_eq!(
        (len, st),
        (1, IOERR),
        "a read into a device-readable buffer"
    );
    let (len, st, _) = run_request(&img, false, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, W)]);
    assert_eq!(
        (len, st),
        (1, IOERR),
        "a write from a device-writable buffer"
    );
    assert_eq!(image_bytes(&img, 0, 512), before);
    let (_, st, _) = run_request(&img, false, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, R)]);
    assert_eq!(st, IOERR, "an id into a device-readable buffer");
}

#[test]
fn a_bad_header_is_refused() {
    let img = image();
    let (len, st) = run(
        &img,
        false,
        &[(HEADER, 16, W), (DATA, 512, W), (STATUS, 1, W)],
    );
    assert_eq!((len, st), (1, IOERR), "a device-writable header");
    let (len, st) = run(
        &img,
        false,
        &[(HEADER, 8, R), (DATA, 512, W), (STATUS, 1, W)],
    );
    assert_eq!((len, st), (1, IOERR), "a short header");
    let (len, st) = run(&img, false, &[(STATUS, 1, W)]);
    assert_eq!((len, st), (1, IOERR), "no header at all");
}

#[test]
fn a_chain_without_a_status_byte_is_returned_with_nothing_written() {
    let img = image();
    let (len, st) = run(
        &img,
        false,
        &[(HEADER, 16, R), (DATA, 512, W), (STATUS, 1, R)],
    );
    assert_eq!(
        (len, st),
        (0, UNTOUCHED),
        "a device-readable last descriptor"
    );
    let (len, _) = run(
        &img,
        false,
        &[(HEADER, 16, R), (DATA, 512, W), (STATUS, 0, W)],
    );
    assert_eq!(len, 0, "an empty last descriptor");
}

#[test]
fn the_configuration_space_holds_capacity_and_limits() {
    let img = image();
    let block = Block::new("drive0", img.as_path(), false).unwrap();
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS);
    let mut limits = [0u8; 8];
    block.read_config(8, &mut limits);
    assert_eq!(limits[..4], SIZE_MAX.to_le_bytes());
    assert_eq!(limits[4..], SEG_MAX.to_le_bytes());
    let mut beyond = [0xffu8; 4];
    block.read_config(4096, &mut beyond);
    assert_eq!(beyond, [0; 4]);
    let features = block.avail_features();
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
    ] {
        assert_ne!(features & 1 << bit, 0, "feature bit {bit}");
    }
    assert_ne!(features & VIRTIO_F_VERSION_1, 0);
}

#[test]
fn an_image_of_partial_sectors_is_refused_with_the_fix() {
    let img = TempFile::new_with_prefix(std::env::temp_dir().join("hiber-block-test")).unwrap();
    img.as_file().set_len(1000).unwrap();
    let err = Block::new("odd", img.as_path(), false).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("drive odd"), "{msg}");
    assert!(msg.contains("1000 bytes, not a multiple of 512"), "{msg}");
    assert!(msg.contains("truncate -s 1024"), "{msg}");
}

#[test]
fn a_missing_image_is_refused_naming_it() {
    let img = image();
    let path = img.as_path().with_extension("gone");
    let err = Block::new("d", &path, true).err().unwrap();
    assert!(matches!(err, BlockError::Open { .. }), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn save_and_restore_keep_the_drive() {
    let img = image();
    let block = Block::new("data", img.as_path(), true).unwrap();
    let state = block.save();
    assert_eq!(state.id, "data");
    assert_eq!(state.path, img.as_path());
    assert!(state.read_only);
    assert_eq!(state.size, DISK_SECTORS * SECTOR_SIZE);

    let mut encoded = Vec::new();
    ciborium::into_writer(&state, &mut encoded).unwrap();
    let decoded: BlockState = ciborium::from_reader(encoded.as_slice()).unwrap();
    let restored = Block::restore(&decoded).unwrap();
    assert_eq!(restored.save(), state);
    assert_eq!(restored.id(), "data");
    assert_eq!(restored.avail_features(), block.avail_features());
    let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
    block.read_config(0, &mut a);
    restored.read_config(0, &mut b);
    assert_eq!(a, b, "the guest sees the same configuration");
}

#[test]
fn a_restored_drive_serves_requests_on_the_saved_queue_positions() {
    let img = image();
    let mem = test_memory();
    header(&mem, VIRTIO_BLK_T_IN, 1);
    let mock = mock_queue(&mem, 0, 16);
    mock.add_desc_chains(&chain(0, &request(&[(DATA, 512, W)])), 0)
        .unwrap();
    let block = Block::new("data", img.as_path(), false).unwrap();
    let (mut block, _irq) = active_block(&mem, &mock, block);
    block.process_queue(0);
    block.quiesce().unwrap();
    let saved_queue = crate::virtio::SavedQueue::save(&block.queues().unwrap()[0]);
    let state = block.save();
    drop(block);

    mock.add_desc_chains(&chain(3, &request(&[(DATA + 0x1000, 512, W)])), 3)
        .unwrap();
    let mut restored = Block::restore(&state).unwrap();
    let (mut active, _irq) = activation(&mem, &[&mock], restored.avail_features());
    active.queues[0] = saved_queue.restore().unwrap();
    restored.activate(active).unwrap();
    restored.process_queue(0);
    assert_eq!(used_count(&mock), 2, "the second request only is served");
    assert_eq!(used_entry(&mock, 1), (3, 513));
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, image_bytes(&img, 512, 512));
}

#[test]
fn restore_refuses_a_missing_image() {
    let img = image();
    let state = Block::new("data", img.as_path(), false).unwrap().save();
    drop(img);
    let err = Block::restore(&state).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, BlockError::Missing { .. }), "{msg}");
    assert!(msg.contains("drive data"), "{msg}");
    assert!(msg.contains(&state.path.display().to_string()), "{msg}");
    assert!(msg.contains("restore with the disk image the snapshot was taken with"));
}

#[test]
fn restore_refuses_an_image_of_another_size() {
    let img = image();
    let state = Block::new("data", img.as_path(), false).unwrap().save();
    img.as_file()
        .set_len(2 * DISK_SECTORS * SECTOR_SIZE)
        .unwrap();
    let err = Block::restore(&state).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, BlockError::SizeChanged { .. }), "{msg}");
    let expected = format!(
        "drive data: image {} is {} bytes but the snapshot was taken with {} bytes: \
         restore with the disk image the snapshot was taken with",
        state.path.display(),
        2 * state.size,
        state.size
    );
    assert_eq!(msg, expected);

    img.as_file().set_len(1000).unwrap();
    let err = Block::restore(&state).err().unwrap();
    assert!(matches!(err, BlockError::SizeChanged { .. }), "{err}");
}

#[test]
fn repeated_faults_of_one_kind_are_warned_about_once() {
    let mut log = FaultLog::default();
    log.report("d", 0, &RequestError::NoStatus);
    log.report("d", 1, &RequestError::NoStatus);
    log.report("d", 2, &RequestError::BadHeader);
    assert_eq!(log.seen.len(), 2);
}

#[test]
fn an_inactive_drive_ignores_notifications() {
    let img = image();
    let mut block = Block::new("data", img.as_path(), false).unwrap();
    block.process_queue(0);
    assert!(block.queues().is_none());
    block.quiesce().unwrap();
}

/// Drives the fuzz entry point with pseudo-random inputs; proves it neither
/// panics nor hangs on them, not that every path was reached.
#[test]
fn fuzz_inputs_neither_panic_nor_hang() {
    for input in crate::virtio::test_utils::pseudo_random_inputs(400, 384) {
        fuzz_queue(&input);
    }
    fuzz_queue(&[]);
}
