//! An Intel MultiProcessor Specification 1.4 table, so that a guest without ACPI
//! finds every vCPU, the IOAPIC and the interrupt routing.
//!
//! The floating pointer sits at MPTABLE_START, the top 1 KiB of base memory where
//! Linux looks for it; the configuration table follows it directly. linux-loader has
//! no MP table types, so the structures below are written here after the layouts in
//! the specification (and Linux's `mpspec_def.h`).

use std::mem::size_of;

use log::debug;
use thiserror::Error;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::layout::{APIC_ADDR, IOAPIC_ADDR, IOAPIC_NUM_PINS, MPTABLE_LIMIT, MPTABLE_START};

/// Most vCPUs the table describes: local APIC ids are 8 bits, 0xff is the
/// broadcast id, and the IOAPIC takes the id after the last vCPU.
pub const MAX_CPUS: u8 = 254;

const MPF_SIGNATURE: [u8; 4] = *b"_MP_";
const MPC_SIGNATURE: [u8; 4] = *b"PCMP";
const MP_SPEC_REV_1_4: u8 = 4;
const OEM_ID: [u8; 8] = *b"HIBER   ";
const PRODUCT_ID: [u8; 12] = *b"HIBER VM    ";

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTPROCESSOR: u8 = 1 << 1;
const IOAPIC_USABLE: u8 = 1 << 0;
/// Version register values of KVM's local APIC and IOAPIC.
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// CPUID signature (family 6) and feature flags (FPU, APIC) shown to the guest.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const ISA_BUS_ID: u8 = 0;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Destination "all local APICs" for local interrupt entries.
const ALL_LOCAL_APICS: u8 = 0xff;

/// MP floating pointer structure.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    specification: u8,
    checksum: u8,
    feature: [u8; 5],
}

/// MP configuration table header.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcTable {
    signature: [u8; 4],
    length: u16,
    spec: u8,
    checksum: u8,
    oem: [u8; 8],
    product_id: [u8; 12],
    oem_ptr: u32,
    oem_size: u16,
    oem_count: u16,
    lapic: u32,
    reserved: u32,
}

/// Processor entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcCpu {
    entry_type: u8,
    apic_id: u8,
    apic_ver: u8,
    cpu_flag: u8,
    cpu_feature: u32,
    feature_flag: u32,
    reserved: [u32; 2],
}

/// Bus entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcBus {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

/// I/O APIC entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIoapic {
    entry_type: u8,
    apic_id: u8,
    apic_ver: u8,
    flags: u8,
    apic_addr: u32,
}

/// I/O interrupt assignment entry, and (same layout) local interrupt entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIntsrc {
    entry_type: u8,
    irq_type: u8,
    irq_flag: u16,
    src_bus: u8,
    src_bus_irq: u8,
    dst_apic: u8,
    dst_irq: u8,
}

// SAFETY: each struct is `repr(C, packed)` with only integer and byte-array fields,
// so it has no padding and every bit pattern is a valid value.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: as above: packed, integer fields only.
unsafe impl ByteValued for MpcTable {}
// SAFETY: as above: packed, integer fields only.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: as above: packed, integer fields only.
unsafe impl ByteValued for MpcBus {}
// SAFETY: as above: packed, integer fields only.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: as above: packed, integer fields only.
unsafe impl ByteValued for MpcIntsrc {}

/// Errors from building and writing the MP table.
#[derive(Debug, Error)]
pub enum Error {
    /// Zero vCPUs asked for.
    #[error("an MP table needs at least one vCPU")]
    NoCpus,
    /// More vCPUs than the table can number.
    #[error("{requested} vCPUs do not fit in the MP table: at most {MAX_CPUS} are supported")]
    TooManyCpus {
        /// The requested vCPU count.
        requested: u8,
    },
    /// Guest memory does not cover the table's area.
    #[error("could not write the MP table at {MPTABLE_START:#x}: is guest memory that small?")]
    Write(#[source] GuestMemoryError),
}

/// Size in bytes of the floating pointer and configuration table for `num_cpus`.
pub const fn mptable_size(num_cpus: u8) -> usize {
    size_of::<MpfIntel>()
        + size_of::<MpcTable>()
        + size_of::<MpcCpu>() * num_cpus as usize
        + size_of::<MpcBus>()
        + size_of::<MpcIoapic>()
        + size_of::<MpcIntsrc>() * (IOAPIC_NUM_PINS as usize + 2)
}

// The largest table must fit between MPTABLE_START and the BIOS ROM area.
const _: () = assert!(MPTABLE_START as usize + mptable_size(MAX_CPUS) <= MPTABLE_LIMIT as usize);

/// Checks that an MP table can describe `num_cpus` vCPUs.
pub fn check_cpu_count(num_cpus: u8) -> Result<(), Error> {
    match num_cpus {
        0 => Err(Error::NoCpus),
        n if n > MAX_CPUS => Err(Error::TooManyCpus { requested: n }),
        _ => Ok(()),
    }
}

/// Writes the MP table for `num_cpus` vCPUs (APIC id = vCPU index, vCPU 0 the boot
/// processor) at MPTABLE_START.
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, num_cpus: u8) -> Result<(), Error> {
    let table = build_mptable(num_cpus, MPTABLE_START as u32)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(Error::Write)?;
    debug!(
        "MP table: {num_cpus} vCPUs, {} bytes at {MPTABLE_START:#x}",
        table.len()
    );
    Ok(())
}

/// The bytes of the floating pointer followed by the configuration table, for a
/// table placed at guest physical address `base`.
fn build_mptable(num_cpus: u8, base: u32) -> Result<Vec<u8>, Error> {
    check_cpu_count(num_cpus)?;
    let mut config = MpcTable::default().as_slice().to_vec();
    for cpu in 0..num_cpus {
        config.extend_from_slice(cpu_entry(cpu).as_slice());
    }
    config.extend_from_slice(isa_bus_entry().as_slice());
    config.extend_from_slice(ioapic_entry(num_cpus).as_slice());
    for pin in 0..IOAPIC_NUM_PINS {
        config.extend_from_slice(irq_entry(num_cpus, pin).as_slice());
    }
    config.extend_from_slice(local_irq_entry(INT_TYPE_EXTINT, 0).as_slice());
    config.extend_from_slice(local_irq_entry(INT_TYPE_NMI, 1).as_slice());
    finish_header(&mut config);

    let mut table = floating_pointer(base + size_of::<MpfIntel>() as u32)
        .as_slice()
        .to_vec();
    table.extend_from_slice(&config);
    Ok(table)
}

/// Fills in the header of `config` now that its entries follow it.
fn finish_header(config: &mut [u8]) {
    let entry_bytes = &config[size_of::<MpcTable>()..];
    let mut header = MpcTable {
        signature: MPC_SIGNATURE,
        length: config.len() as u16,
        spec: MP_SPEC_REV_1_4,
        oem: OEM_ID,
        product_id: PRODUCT_ID,
        lapic: APIC_ADDR as u32,
        ..Default::default()
    };
    header.checksum = checksum_byte(&[header.as_slice(), entry_bytes].concat());
    config[..size_of::<MpcTable>()].copy_from_slice(header.as_slice());
}

fn floating_pointer(config_addr: u32) -> MpfIntel {
    let mut mpf = MpfIntel {
        signature: MPF_SIGNATURE,
        physptr: config_addr,
        // Length in 16-byte paragraphs.
        length: 1,
        specification: MP_SPEC_REV_1_4,
        ..Default::default()
    };
    mpf.checksum = checksum_byte(mpf.as_slice());
    mpf
}

fn cpu_entry(cpu: u8) -> MpcCpu {
    let boot = if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
    MpcCpu {
        entry_type: MP_PROCESSOR,
        apic_id: cpu,
        apic_ver: APIC_VERSION,
        cpu_flag: CPU_ENABLED | boot,
        cpu_feature: CPU_SIGNATURE,
        feature_flag: CPU_FEATURES,
        ..Default::default()
    }
}

fn isa_bus_entry() -> MpcBus {
    MpcBus {
        entry_type: MP_BUS,
        bus_id: ISA_BUS_ID,
        bus_type: *b"ISA   ",
    }
}

fn ioapic_entry(num_cpus: u8) -> MpcIoapic {
    MpcIoapic {
        entry_type: MP_IOAPIC,
        apic_id: num_cpus,
        apic_ver: IOAPIC_VERSION,
        flags: IOAPIC_USABLE,
        apic_addr: IOAPIC_ADDR as u32,
    }
}

/// Routes ISA IRQ `pin` to the same IOAPIC pin. Pins 16 and up have no ISA IRQ,
/// but listing them the same way lets Linux map them for virtio-mmio devices.
fn irq_entry(ioapic_id: u8, pin: u8) -> MpcIntsrc {
    MpcIntsrc {
        entry_type: MP_INTSRC,
        irq_type: INT_TYPE_INT,
        // Polarity and trigger "conforming to the bus": edge, active high for ISA.
        irq_flag: 0,
        src_bus: ISA_BUS_ID,
        src_bus_irq: pin,
        dst_apic: ioapic_id,
        dst_irq: pin,
    }
}

/// Wires local APIC input `lint` of every vCPU as `irq_type` (ExtINT or NMI).
fn local_irq_entry(irq_type: u8, lint: u8) -> MpcIntsrc {
    MpcIntsrc {
        entry_type: MP_LINTSRC,
        irq_type,
        irq_flag: 0,
        src_bus: ISA_BUS_ID,
        src_bus_irq: 0,
        dst_apic: ALL_LOCAL_APICS,
        dst_irq: lint,
    }
}

/// The byte that makes `bytes` plus itself sum to zero modulo 256 (the checksum
/// field must be zero in `bytes`).
fn checksum_byte(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// Reads back the configuration table that the floating pointer names.
    fn read_config(mem: &GuestMemoryMmap) -> Vec<u8> {
        let mpf: MpfIntel = mem.read_obj(GuestAddress(MPTABLE_START)).unwrap();
        let header: MpcTable = mem.read_obj(GuestAddress(u64::from(mpf.physptr))).unwrap();
        let mut config = vec![0u8; usize::from(header.length)];
        mem.read_slice(&mut config, GuestAddress(u64::from(mpf.physptr)))
            .unwrap();
        config
    }

    /// Entry types in table order, with the size of each entry type.
    fn entry_types(config: &[u8]) -> Vec<u8> {
        let mut types = Vec::new();
        let mut at = size_of::<MpcTable>();
        while at < config.len() {
            types.push(config[at]);
            at += if config[at] == MP_PROCESSOR { 20 } else { 8 };
        }
        assert_eq!(
            at,
            config.len(),
            "entries must end exactly at the table length"
        );
        types
    }

    #[test]
    fn floating_pointer_is_valid_and_points_after_itself() {
        let mem = guest_memory();
        setup_mptable(&mem, 1).unwrap();
        let mpf: MpfIntel = mem.read_obj(GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(mpf.signature, *b"_MP_");
        assert_eq!((mpf.length, mpf.specification), (1, 4));
        assert_eq!({ mpf.physptr }, MPTABLE_START as u32 + 16);
        assert_eq!(sum(mpf.as_slice()), 0);
    }

    #[test]
    fn one_cpu_table_has_every_entry_and_sums_to_zero() {
        let mem = guest_memory();
        setup_mptable(&mem, 1).unwrap();
        let config = read_config(&mem);
        assert_eq!(&config[..4], b"PCMP");
        assert_eq!(sum(&config), 0);
        assert_eq!(config.len() + 16, mptable_size(1));
        let types = entry_types(&config);
        let count = |t: u8| types.iter().filter(|&&x| x == t).count();
        assert_eq!(count(MP_PROCESSOR), 1);
        assert_eq!(count(MP_BUS), 1);
        assert_eq!(count(MP_IOAPIC), 1);
        assert_eq!(count(MP_INTSRC), usize::from(IOAPIC_NUM_PINS));
        assert_eq!(count(MP_LINTSRC), 2);
    }

    #[test]
    fn many_cpus_get_sequential_apic_ids_and_one_boot_processor() {
        let mem = guest_memory();
        setup_mptable(&mem, 8).unwrap();
        let config = read_config(&mem);
        assert_eq!(sum(&config), 0);
        let cpus: Vec<MpcCpu> = (0..8)
            .map(|i| {
                let at = size_of::<MpcTable>() + i * size_of::<MpcCpu>();
                MpcCpu::from_slice(&config[at..at + 20]).copied().unwrap()
            })
            .collect();
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!((cpu.entry_type, cpu.apic_id), (MP_PROCESSOR, i as u8));
            let boot = cpu.cpu_flag & CPU_BOOTPROCESSOR != 0;
            assert_eq!(boot, i == 0);
        }
        let ioapic_at = size_of::<MpcTable>() + 8 * 20 + 8;
        let ioapic = MpcIoapic::from_slice(&config[ioapic_at..ioapic_at + 8]).unwrap();
        assert_eq!((ioapic.entry_type, ioapic.apic_id), (MP_IOAPIC, 8));
        assert_eq!({ ioapic.apic_addr }, IOAPIC_ADDR as u32);
    }

    #[test]
    fn largest_table_still_sums_to_zero() {
        let mem = guest_memory();
        setup_mptable(&mem, MAX_CPUS).unwrap();
        let config = read_config(&mem);
        assert_eq!(sum(&config), 0);
        assert_eq!(config.len() + 16, mptable_size(MAX_CPUS));
    }

    #[test]
    fn cpu_counts_outside_the_limits_are_refused() {
        let mem = guest_memory();
        assert!(matches!(setup_mptable(&mem, 0), Err(Error::NoCpus)));
        assert!(matches!(
            setup_mptable(&mem, 255),
            Err(Error::TooManyCpus { requested: 255 })
        ));
    }

    #[test]
    fn struct_sizes_match_the_specification() {
        assert_eq!(size_of::<MpfIntel>(), 16);
        assert_eq!(size_of::<MpcTable>(), 44);
        assert_eq!(size_of::<MpcCpu>(), 20);
        assert_eq!(size_of::<MpcBus>(), 8);
        assert_eq!(size_of::<MpcIoapic>(), 8);
        assert_eq!(size_of::<MpcIntsrc>(), 8);
    }
}
