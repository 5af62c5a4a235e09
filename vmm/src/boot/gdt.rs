//! The boot GDT and IDT, and the KVM segment registers that match them.
//!
//! The 64-bit boot protocol wants a flat code segment at selector 0x10 (`__BOOT_CS`)
//! and a flat data segment at 0x18 (`__BOOT_DS`), so the table is:
//!
//! | selector | descriptor                                   |
//! |----------|----------------------------------------------|
//! | 0x00     | null                                         |
//! | 0x08     | null (unused)                                |
//! | 0x10     | kernel code, 64-bit, DPL 0                   |
//! | 0x18     | kernel data, read/write, DPL 0               |
//! | 0x20     | 64-bit TSS, busy (16 bytes: two slots)       |
//!
//! The kernel installs its own GDT, IDT and TSS within its first instructions; these
//! only have to be valid until then.

use kvm_bindings::kvm_segment;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::layout::{BOOT_GDT_ADDR, BOOT_IDT_ADDR};

/// Number of 8-byte slots in the boot GDT.
pub const GDT_ENTRY_COUNT: usize = 6;
/// Selector of the 64-bit kernel code segment (`__BOOT_CS`).
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the kernel data segment (`__BOOT_DS`), for DS, ES, FS, GS and SS.
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the task-state segment.
pub const TSS_SELECTOR: u16 = 0x20;
/// Size of the boot IDT: a single null 16-byte gate.
pub const IDT_SIZE: usize = 16;

// Access byte: present, DPL 0, code/data (S) or system, and the type nibble.
const ACCESS_CODE_64: u8 = 0x9b; // present, S, execute/read, accessed
const ACCESS_DATA: u8 = 0x93; // present, S, read/write, accessed
const ACCESS_TSS_BUSY: u8 = 0x8b; // present, system, 64-bit TSS (busy)

// Flags nibble (bits 52..55): AVL, L, D/B, G.
const FLAG_L: u8 = 0x2;
const FLAG_DB: u8 = 0x4;
const FLAG_G: u8 = 0x8;

/// Limit of the TSS: the architectural minimum size of a 64-bit TSS, minus one.
const TSS_LIMIT: u32 = 0x67;

/// Errors from writing the GDT and IDT.
#[derive(Debug, Error)]
pub enum Error {
    /// Guest memory does not hold the table's address.
    #[error("could not write the boot {table} at {addr:#x}: is guest memory that small?")]
    Write {
        /// "GDT" or "IDT".
        table: &'static str,
        /// Guest physical address written.
        addr: u64,
        /// What guest memory reported.
        #[source]
        source: GuestMemoryError,
    },
}

/// Encodes a segment descriptor from its access byte, flags nibble, base and limit.
pub fn gdt_entry(access: u8, flags: u8, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (u64::from(access) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (u64::from(flags & 0xf) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// The boot GDT, indexed by selector / 8 (see the module documentation).
pub fn gdt_entries() -> [u64; GDT_ENTRY_COUNT] {
    [
        0,
        0,
        gdt_entry(ACCESS_CODE_64, FLAG_G | FLAG_L, 0, 0xfffff),
        gdt_entry(ACCESS_DATA, FLAG_G | FLAG_DB, 0, 0xfffff),
        gdt_entry(ACCESS_TSS_BUSY, 0, 0, TSS_LIMIT),
        // Upper half of the 16-byte TSS descriptor: base bits 63..32, all zero.
        0,
    ]
}

/// The KVM segment register for GDT `entry` loaded through slot `index`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let field = |shift: u32, bits: u32| ((entry >> shift) & ((1 << bits) - 1)) as u8;
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let raw_limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    let g = field(55, 1);
    let present = field(47, 1);
    kvm_segment {
        base,
        // With G set the limit counts 4 KiB pages; KVM wants it in bytes.
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: field(40, 4),
        s: field(44, 1),
        dpl: field(45, 2),
        present,
        avl: field(52, 1),
        l: field(53, 1),
        db: field(54, 1),
        g,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the boot GDT at BOOT_GDT_ADDR and a null IDT at BOOT_IDT_ADDR.
pub fn write_gdt_idt<M: GuestMemoryBackend>(mem: &M) -> Result<(), Error> {
    let gdt: Vec<u8> = gdt_entries()
        .iter()
        .flat_map(|entry| entry.to_le_bytes())
        .collect();
    write_table(mem, "GDT", BOOT_GDT_ADDR, &gdt)?;
    write_table(mem, "IDT", BOOT_IDT_ADDR, &[0u8; IDT_SIZE])
}

fn write_table<M: GuestMemoryBackend>(
    mem: &M,
    table: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), Error> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| Error::Write {
            table,
            addr,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn descriptors_have_the_well_known_encodings() {
        let gdt = gdt_entries();
        assert_eq!(gdt[0], 0);
        assert_eq!(gdt[2], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[3], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[4], 0x0000_8b00_0000_0067);
    }

    #[test]
    fn code_segment_is_flat_64_bit() {
        let cs = kvm_segment_from_gdt(gdt_entries()[2], 2);
        assert_eq!(cs.selector, CODE_SELECTOR);
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        assert_eq!((cs.l, cs.db, cs.g, cs.s, cs.present), (1, 0, 1, 1, 1));
        assert_eq!((cs.type_, cs.dpl, cs.unusable), (0xb, 0, 0));
    }

    #[test]
    fn data_and_tss_segments_decode() {
        let ds = kvm_segment_from_gdt(gdt_entries()[3], 3);
        assert_eq!(ds.selector, DATA_SELECTOR);
        assert_eq!((ds.type_, ds.db, ds.l, ds.limit), (0x3, 1, 0, 0xffff_ffff));
        let tr = kvm_segment_from_gdt(gdt_entries()[4], 4);
        assert_eq!(tr.selector, TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.g, tr.limit), (0xb, 0, 0, TSS_LIMIT));
    }

    #[test]
    fn base_and_limit_round_trip() {
        let entry = gdt_entry(ACCESS_DATA, 0, 0x1234_5678, 0xabcde);
        let seg = kvm_segment_from_gdt(entry, 7);
        assert_eq!(
            (seg.base, seg.limit, seg.selector),
            (0x1234_5678, 0xabcde, 0x38)
        );
    }

    #[test]
    fn null_entry_is_unusable() {
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn tables_land_in_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        write_gdt_idt(&mem).unwrap();
        for (i, expected) in gdt_entries().iter().enumerate() {
            let addr = GuestAddress(BOOT_GDT_ADDR + 8 * i as u64);
            assert_eq!(mem.read_obj::<u64>(addr).unwrap(), *expected);
        }
        let idt: [u8; IDT_SIZE] = mem.read_obj(GuestAddress(BOOT_IDT_ADDR)).unwrap();
        assert_eq!(idt, [0; IDT_SIZE]);
    }

    #[test]
    fn writing_past_guest_memory_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x1000), 0x1000)]).unwrap();
        assert!(matches!(
            write_gdt_idt(&mem),
            Err(Error::Write { table: "GDT", .. })
        ));
    }
}
