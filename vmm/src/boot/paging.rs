//! Identity-mapped page tables for entering the kernel in 64-bit mode.
//!
//! The 64-bit boot protocol needs the kernel, the zero page and the command line
//! identity-mapped. One PML4 entry, one PDPT entry and one page directory of 512
//! 2 MiB pages map the first 1 GiB, which holds all of them; the kernel builds its
//! own tables straight away.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::layout::{PDPT_ADDR, PD_ADDR, PML4_ADDR};

/// Page-table entry bit: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Page-table entry bit: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-directory entry bit: maps a 2 MiB page instead of pointing at a table.
pub const PTE_HUGE: u64 = 1 << 7;

/// Bytes mapped by one page-directory entry.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;
/// Bytes identity-mapped at entry.
pub const IDENTITY_MAPPED_SIZE: u64 = ENTRIES_PER_TABLE as u64 * HUGE_PAGE_SIZE;

const ENTRIES_PER_TABLE: usize = 512;

/// Errors from writing the page tables.
#[derive(Debug, Error)]
pub enum Error {
    /// Guest memory does not hold the table's address.
    #[error("could not write the boot page table at {addr:#x}: is guest memory that small?")]
    Write {
        /// Guest physical address of the table.
        addr: u64,
        /// What guest memory reported.
        #[source]
        source: GuestMemoryError,
    },
}

/// Writes the PML4 at PML4_ADDR, the PDPT at PDPT_ADDR and the page directory at
/// PD_ADDR, identity-mapping the first [`IDENTITY_MAPPED_SIZE`] bytes.
pub fn setup_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), Error> {
    let table_entry = |next: u64| next | PTE_PRESENT | PTE_WRITABLE;
    write_table(mem, PML4_ADDR, &[table_entry(PDPT_ADDR)])?;
    write_table(mem, PDPT_ADDR, &[table_entry(PD_ADDR)])?;
    let pd: Vec<u64> = (0..ENTRIES_PER_TABLE as u64)
        .map(|i| (i * HUGE_PAGE_SIZE) | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE)
        .collect();
    write_table(mem, PD_ADDR, &pd)
}

/// Writes a whole 4 KiB table: `entries` first, zeros after them.
fn write_table<M: GuestMemoryBackend>(mem: &M, addr: u64, entries: &[u64]) -> Result<(), Error> {
    let mut table = [0u8; ENTRIES_PER_TABLE * 8];
    for (slot, entry) in table.chunks_exact_mut(8).zip(entries) {
        slot.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&table, GuestAddress(addr))
        .map_err(|source| Error::Write { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn entry(mem: &GuestMemoryMmap, table: u64, index: u64) -> u64 {
        mem.read_obj(GuestAddress(table + index * 8)).unwrap()
    }

    #[test]
    fn tables_identity_map_the_first_gigabyte() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        // Dirty the area first: the tables must overwrite everything they own.
        mem.write_slice(&[0xff; 0x3000], GuestAddress(PML4_ADDR))
            .unwrap();
        setup_page_tables(&mem).unwrap();

        assert_eq!(entry(&mem, PML4_ADDR, 0), PDPT_ADDR | 0x3);
        assert_eq!(entry(&mem, PML4_ADDR, 1), 0);
        assert_eq!(entry(&mem, PML4_ADDR, 511), 0);
        assert_eq!(entry(&mem, PDPT_ADDR, 0), PD_ADDR | 0x3);
        assert_eq!(entry(&mem, PDPT_ADDR, 1), 0);
        assert_eq!(entry(&mem, PD_ADDR, 0), 0x83);
        assert_eq!(entry(&mem, PD_ADDR, 1), 0x20_0083);
        assert_eq!(entry(&mem, PD_ADDR, 511), 0x3fe0_0083);
        assert_eq!(IDENTITY_MAPPED_SIZE, 1 << 30);
    }

    #[test]
    fn too_small_memory_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_page_tables(&mem),
            Err(Error::Write {
                addr: PML4_ADDR,
                ..
            })
        ));
    }
}
