//! The guest physical memory map of a Hiber x86_64 guest, and the guest memory that
//! backs it.
//!
//! ```text
//! 0x0000_0000 .. 0x0000_0500   real-mode interrupt vectors and BIOS data area (zero)
//! 0x0000_0500                  boot GDT (BOOT_GDT_ADDR)
//! 0x0000_0540                  boot IDT, one null gate (BOOT_IDT_ADDR)
//! 0x0000_1000                  PML4 (PML4_ADDR)
//! 0x0000_2000                  PDPT (PDPT_ADDR)
//! 0x0000_3000                  page directory: first 1 GiB in 2 MiB pages (PD_ADDR)
//! 0x0000_7000                  zero page, `struct boot_params` (ZERO_PAGE_ADDR)
//! 0x0000_8000                  setup_data chain, RNG seed (SETUP_DATA_ADDR)
//! 0x0000_9000 .. 0x0001_0000   boot stack, grows down from BOOT_STACK_POINTER
//! 0x0002_0000                  kernel command line (CMDLINE_ADDR)
//! 0x0009_fc00 .. 0x0010_0000   EBDA with the MP table, VGA and BIOS area: e820 reserved
//! 0x0010_0000 (1 MiB)          kernel (HIMEM_START); initrd at the top of low RAM
//! 0xc000_0000 .. 0x1_0000_0000 MMIO gap: never RAM
//!     0xc000_0000              virtio-mmio devices, VIRTIO_MMIO_DEVICE_SIZE each
//!     0xfec0_0000              IOAPIC
//!     0xfee0_0000              local APIC
//!     0xfeff_c000              KVM identity-map page and TSS (Intel only)
//! 0x1_0000_0000 ..             RAM beyond MMIO_GAP_START, for guests bigger than 3 GiB
//! ```
//!
//! Everything below 1 MiB is reserved by Linux itself early at boot, so the boot
//! structures there are safe until the kernel has copied what it needs.

use log::debug;
use thiserror::Error;
use vm_memory::bitmap::Bitmap;
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionCollectionError, GuestRegionMmap};

/// Size of a guest page as the boot code aligns things.
pub const PAGE_SIZE: u64 = 0x1000;

/// Guest physical address of the boot GDT.
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// Guest physical address of the boot IDT (a single null gate: any early fault is fatal).
pub const BOOT_IDT_ADDR: u64 = 0x540;

/// Page-map level 4 table: CR3 at entry.
pub const PML4_ADDR: u64 = 0x1000;
/// Page-directory-pointer table referenced by the first PML4 entry.
pub const PDPT_ADDR: u64 = 0x2000;
/// Page directory mapping the first 1 GiB with 2 MiB pages.
pub const PD_ADDR: u64 = 0x3000;

/// The zero page (`struct boot_params`); RSI points at it at entry.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Start of the setup_data linked list referenced from the zero page.
pub const SETUP_DATA_ADDR: u64 = 0x8000;
/// Room for the setup_data list: one page.
pub const SETUP_DATA_MAX_SIZE: u64 = PAGE_SIZE;

/// Initial stack pointer (RSP and RBP); the stack grows down towards 0x9000.
pub const BOOT_STACK_POINTER: u64 = 0xfff0;

/// Guest physical address of the kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line including its NUL: the x86 kernel's COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Start of the extended BIOS data area: the top 1 KiB of the 640 KiB of base
/// memory, where Linux looks for the MP floating pointer.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table (floating pointer then configuration table) starts here.
pub const MPTABLE_START: u64 = EBDA_START;
/// The MP table must end before the BIOS ROM area, which Linux also scans.
pub const MPTABLE_LIMIT: u64 = 0xf0000;

/// Start of high memory: the kernel is loaded here (or at its ELF addresses above it).
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the MMIO gap below 4 GiB: RAM stops here and resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End (exclusive) of the MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Size of the MMIO gap.
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;

/// First virtio-mmio device window, at the start of the MMIO gap.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_DEVICE_SIZE: u64 = 0x1000;
/// Number of virtio-mmio windows reserved at VIRTIO_MMIO_BASE.
pub const VIRTIO_MMIO_MAX_DEVICES: u64 = 64;

/// Default base address of the IOAPIC.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Number of IOAPIC input pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_NUM_PINS: u8 = 24;
/// Default base address of the local APIC.
pub const APIC_ADDR: u64 = 0xfee0_0000;

/// One page for KVM_SET_IDENTITY_MAP_ADDR (used by KVM on Intel hosts).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfeff_c000;
/// Three pages for KVM_SET_TSS_ADDR, right after the identity-map page.
pub const KVM_TSS_ADDR: u64 = 0xfeff_d000;

/// Smallest guest memory: low memory plus 1 MiB above HIMEM_START.
pub const MIN_MEM_SIZE: u64 = 2 << 20;

// The map above, checked at compile time: the low structures do not overlap and
// the device windows sit inside the MMIO gap.
const _: () = {
    assert!(BOOT_GDT_ADDR + 8 * super::gdt::GDT_ENTRY_COUNT as u64 <= BOOT_IDT_ADDR);
    assert!(BOOT_IDT_ADDR + super::gdt::IDT_SIZE as u64 <= PML4_ADDR);
    assert!(PD_ADDR + PAGE_SIZE <= ZERO_PAGE_ADDR);
    assert!(ZERO_PAGE_ADDR + PAGE_SIZE <= SETUP_DATA_ADDR);
    assert!(SETUP_DATA_ADDR + SETUP_DATA_MAX_SIZE < BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(MIN_MEM_SIZE > HIMEM_START);
    let virtio_end = VIRTIO_MMIO_BASE + VIRTIO_MMIO_MAX_DEVICES * VIRTIO_MMIO_DEVICE_SIZE;
    assert!(MMIO_GAP_START <= VIRTIO_MMIO_BASE && virtio_end <= IOAPIC_ADDR);
    assert!(IOAPIC_ADDR < APIC_ADDR && APIC_ADDR < KVM_IDENTITY_MAP_ADDR);
    assert!(KVM_IDENTITY_MAP_ADDR + PAGE_SIZE == KVM_TSS_ADDR);
    assert!(KVM_TSS_ADDR + 3 * PAGE_SIZE <= MMIO_GAP_END);
};

/// Errors from creating guest memory.
#[derive(Debug, Error)]
pub enum Error {
    /// The requested size is below the minimum.
    #[error("guest memory of {size:#x} bytes is too small: at least {MIN_MEM_SIZE:#x} needed")]
    TooSmall {
        /// The requested size in bytes.
        size: u64,
    },
    /// The requested size is not a whole number of pages.
    #[error("guest memory of {size:#x} bytes is not a multiple of 4 KiB: round it")]
    Unaligned {
        /// The requested size in bytes.
        size: u64,
    },
    /// Mapping host memory for a region failed.
    #[error("could not map {size:#x} bytes of host memory for guest RAM at {addr:#x}")]
    Mmap {
        /// Guest physical start of the region.
        addr: u64,
        /// Size of the region.
        size: usize,
        /// What mmap reported.
        #[source]
        source: MmapRegionError,
    },
    /// The regions could not be combined into one guest memory.
    #[error("could not assemble the guest memory regions")]
    Regions(#[source] GuestRegionCollectionError),
}

/// The guest RAM regions for `mem_size` bytes of RAM: one region below the MMIO
/// gap, and a second one from 4 GiB for what does not fit below it.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_GAP_START);
    let high = mem_size - low;
    let mut regions = Vec::with_capacity(2);
    if low > 0 {
        regions.push((GuestAddress(0), low as usize));
    }
    if high > 0 {
        regions.push((GuestAddress(MMIO_GAP_END), high as usize));
    }
    regions
}

/// End (exclusive) of the RAM region that starts at address 0.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// Guest physical address of the virtio-mmio window number `index`, if reserved.
pub fn virtio_mmio_addr(index: u64) -> Option<GuestAddress> {
    (index < VIRTIO_MMIO_MAX_DEVICES)
        .then(|| GuestAddress(VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_DEVICE_SIZE))
}

/// Guest memory of `mem_size` bytes laid out by [`ram_regions`], backed by anonymous,
/// private, `MAP_NORESERVE` mappings (host memory is committed on first touch).
///
/// This is an entry point of the boot path, so it reports the boot path's error
/// (`Memory` wrapping this module's [`Error`]).
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, super::Error> {
    create_guest_memory_with_bitmap(mem_size)
}

/// Like [`create_guest_memory`], with a dirty bitmap of type `B` on each region.
pub fn create_guest_memory_with_bitmap<B: Bitmap + Default>(
    mem_size: u64,
) -> Result<GuestMemoryMmap<B>, super::Error> {
    map_guest_memory(mem_size).map_err(super::Error::Memory)
}

fn map_guest_memory<B: Bitmap + Default>(mem_size: u64) -> Result<GuestMemoryMmap<B>, Error> {
    if mem_size < MIN_MEM_SIZE {
        return Err(Error::TooSmall { size: mem_size });
    }
    if !mem_size.is_multiple_of(PAGE_SIZE) {
        return Err(Error::Unaligned { size: mem_size });
    }
    let regions = ram_regions(mem_size)
        .into_iter()
        .map(|(addr, size)| map_region(addr, size))
        .collect::<Result<Vec<_>, _>>()?;
    debug!(
        "guest memory: {mem_size:#x} bytes in {} regions",
        regions.len()
    );
    GuestMemoryMmap::from_regions(regions).map_err(Error::Regions)
}

fn map_region<B: Bitmap + Default>(
    addr: GuestAddress,
    size: usize,
) -> Result<GuestRegionMmap<B>, Error> {
    let mmap_err = |source| Error::Mmap {
        addr: addr.0,
        size,
        source,
    };
    let region = MmapRegionBuilder::new(size)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()
        .map_err(mmap_err)?;
    // `new` only fails when the region would wrap around the address space, which
    // ram_regions never produces; report it as an assembly error all the same.
    GuestRegionMmap::new(region, addr)
        .ok_or(Error::Regions(GuestRegionCollectionError::NoMemoryRegion))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_memory_is_one_region_from_zero() {
        assert_eq!(
            ram_regions(128 * MIB),
            vec![(GuestAddress(0), (128 * MIB) as usize)]
        );
    }

    #[test]
    fn memory_exactly_up_to_the_gap_is_one_region() {
        assert_eq!(
            ram_regions(MMIO_GAP_START),
            vec![(GuestAddress(0), MMIO_GAP_START as usize)]
        );
    }

    #[test]
    fn memory_just_past_the_gap_start_continues_at_4g() {
        let regions = ram_regions(MMIO_GAP_START + PAGE_SIZE);
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), MMIO_GAP_START as usize),
                (GuestAddress(MMIO_GAP_END), PAGE_SIZE as usize),
            ]
        );
    }

    #[test]
    fn large_memory_keeps_its_size_and_skips_the_gap() {
        let regions = ram_regions(16 * GIB);
        let total: u64 = regions.iter().map(|r| r.1 as u64).sum();
        assert_eq!(total, 16 * GIB);
        assert_eq!(regions[1].0, GuestAddress(4 * GIB));
        assert_eq!(regions[1].1 as u64, 16 * GIB - MMIO_GAP_START);
    }

    #[test]
    fn virtio_windows_are_numbered_from_the_gap_start() {
        assert_eq!(virtio_mmio_addr(0), Some(GuestAddress(MMIO_GAP_START)));
        assert_eq!(
            virtio_mmio_addr(1),
            Some(GuestAddress(MMIO_GAP_START + 0x1000))
        );
        assert_eq!(virtio_mmio_addr(VIRTIO_MMIO_MAX_DEVICES), None);
    }

    #[test]
    fn create_guest_memory_maps_every_region() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let region = mem.iter().next().unwrap();
        assert_eq!(region.start_addr(), GuestAddress(0));
        assert_eq!(region.len(), 64 * MIB);
    }

    #[test]
    fn create_guest_memory_refuses_bad_sizes() {
        assert!(matches!(
            create_guest_memory(MIB),
            Err(crate::boot::Error::Memory(Error::TooSmall { size })) if size == MIB
        ));
        assert!(matches!(
            map_guest_memory::<()>(64 * MIB + 1),
            Err(Error::Unaligned { .. })
        ));
    }
}
