//! The zero page (`struct boot_params`), the kernel command line and the
//! setup_data list handed to the kernel through the Linux boot protocol.
//!
//! The zero page carries the setup header (the bzImage's own, or one written here
//! for a vmlinux), the command line and initrd addresses, the e820 memory map and a
//! pointer to a setup_data list. That list holds a `SETUP_RNG_SEED` entry with bytes
//! from the host's getrandom, which Linux 6.0 and later mix into their entropy pool
//! at once (and then wipe); older kernels skip entry types they do not know. The
//! seed only counts as entropy, so that the guest need not wait for any, when the
//! kernel trusts its boot loader: `CONFIG_RANDOM_TRUST_BOOTLOADER=y` (the default).
//! In 6.1 the `random.trust_bootloader=` switch is parsed after setup_data has been
//! consumed, so the command line cannot make up for the option being off.

use std::io;

use linux_loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH,
    SETUP_RNG_SEED, XLF_KERNEL_64,
};
use linux_loader::cmdline::{self, Cmdline};
use log::debug;
use thiserror::Error;
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
};

use super::layout::{
    CMDLINE_ADDR, CMDLINE_MAX_SIZE, EBDA_START, HIMEM_START, SETUP_DATA_ADDR, SETUP_DATA_MAX_SIZE,
    ZERO_PAGE_ADDR,
};
use super::loader::InitrdInfo;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// Bytes of host randomness in the RNG seed: 512 bits, twice what Linux needs
/// before it considers its pool initialised.
pub const RNG_SEED_LEN: usize = 64;

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader type: any loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Boot protocol version claimed for a vmlinux: the one of Linux 5.5 and later.
const VMLINUX_BOOT_PROTOCOL: u16 = 0x020f;
/// Boot protocol versions that introduced fields used here.
const PROTOCOL_CMDLINE_SIZE: u16 = 0x0206;
const PROTOCOL_SETUP_DATA: u16 = 0x0209;
/// Alignment of setup_data entries.
const SETUP_DATA_ALIGN: u64 = 8;

/// What goes into the zero page besides the memory map.
#[derive(Clone, Copy, Debug)]
pub struct BootConfig<'a> {
    /// The kernel command line.
    pub cmdline: &'a Cmdline,
    /// The loaded initrd, if any.
    pub initrd: Option<InitrdInfo>,
    /// The bzImage's setup header; `None` for a vmlinux.
    pub setup_header: Option<setup_header>,
}

/// Header of one setup_data list entry (`struct setup_data` without its payload).
/// linux-loader declares the type constants but not this struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SetupData {
    next: u64,
    kind: u32,
    len: u32,
}

// SAFETY: `repr(C)` with a u64 then two u32: 16 bytes, no padding, and every bit
// pattern is a valid value.
unsafe impl ByteValued for SetupData {}

/// Errors from building the command line and the zero page.
#[derive(Debug, Error)]
pub enum Error {
    /// The command line is longer than the kernel takes.
    #[error("the kernel command line is {len} bytes, more than the {max} accepted: shorten it")]
    CmdlineTooLong {
        /// Its length without the NUL.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// The command line has characters or quoting linux-loader refuses.
    #[error("the kernel command line {text:?} is invalid: printable ASCII only, quoted values")]
    InvalidCmdline {
        /// The offending part.
        text: String,
        /// What linux-loader reported.
        #[source]
        source: cmdline::Error,
    },
    /// Writing the command line failed.
    #[error("could not write the kernel command line at {CMDLINE_ADDR:#x}")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// Guest memory does not start with at least 1 MiB of RAM.
    #[error("guest memory must start at address 0 and reach {HIMEM_START:#x}")]
    NoLowMemory,
    /// More memory regions than the zero page has e820 slots for.
    #[error("guest memory has too many regions for the zero page's e820 map ({count})")]
    TooManyE820Entries {
        /// How many entries were needed.
        count: usize,
    },
    /// The host's getrandom failed.
    #[error("could not read a random seed for the guest from the host's getrandom")]
    RandomSeed(#[source] io::Error),
    /// The setup_data entries do not fit in their page.
    #[error(
        "the setup_data list needs {size} bytes, more than the {SETUP_DATA_MAX_SIZE} reserved"
    )]
    SetupDataTooBig {
        /// Bytes needed.
        size: u64,
    },
    /// Writing the setup_data list or the zero page failed.
    #[error("could not write the {what} at {addr:#x}")]
    Write {
        /// "setup_data list" or "zero page".
        what: &'static str,
        /// Guest physical address.
        addr: u64,
        /// What guest memory reported.
        #[source]
        source: GuestMemoryError,
    },
}

type Result<T> = std::result::Result<T, Error>;

/// A command line of `base` (which may hold init arguments after " -- ") followed by
/// the `extra` parameters, refused if longer than CMDLINE_MAX_SIZE with its NUL.
pub fn build_cmdline(base: &str, extra: &[String]) -> Result<Cmdline> {
    let too_long = |len| Error::CmdlineTooLong {
        len,
        max: CMDLINE_MAX_SIZE - 1,
    };
    let invalid = |text: &str, source| Error::InvalidCmdline {
        text: text.to_string(),
        source,
    };
    if !base.chars().all(|c| matches!(c, ' '..='~')) {
        return Err(invalid(base, cmdline::Error::InvalidAscii));
    }
    let mut cmdline = Cmdline::try_from(base, CMDLINE_MAX_SIZE).map_err(|e| match e {
        // try_from reports an overlong string as a capacity problem.
        cmdline::Error::InvalidCapacity => too_long(base.len()),
        e => invalid(base, e),
    })?;
    for param in extra {
        cmdline.insert_str(param).map_err(|e| match e {
            cmdline::Error::TooLarge => too_long(cmdline_len(&cmdline) + 1 + param.len()),
            e => invalid(param, e),
        })?;
    }
    Ok(cmdline)
}

/// Length of `cmdline` without its NUL.
fn cmdline_len(cmdline: &Cmdline) -> usize {
    cmdline.as_cstring().map_or(0, |s| s.as_bytes().len())
}

/// Writes the command line at CMDLINE_ADDR and the zero page at ZERO_PAGE_ADDR,
/// with the e820 map of `mem` and a setup_data list holding a fresh RNG seed.
pub fn write_boot_params<M: GuestMemoryBackend>(mem: &M, config: &BootConfig) -> Result<()> {
    let mut hdr = config.setup_header.unwrap_or_else(vmlinux_setup_header);
    let cmdline_len = write_cmdline(mem, config.cmdline, &hdr)?;
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    if let Some(initrd) = config.initrd {
        hdr.ramdisk_image = initrd.addr.0 as u32;
        hdr.ramdisk_size = initrd.size as u32;
    }
    if hdr.version >= PROTOCOL_SETUP_DATA {
        hdr.setup_data = write_setup_data(mem, &[(SETUP_RNG_SEED, &rng_seed()?)])?;
    }

    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    if let Some(initrd) = config.initrd {
        params.ext_ramdisk_image = (initrd.addr.0 >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size as u64 >> 32) as u32;
    }
    let e820 = e820_entries(mem)?;
    params.e820_entries = e820.len() as u8;
    params.e820_table[..e820.len()].copy_from_slice(&e820);

    write_bytes(mem, "zero page", ZERO_PAGE_ADDR, params.as_slice())?;
    debug!(
        "zero page written: cmdline {cmdline_len} bytes, {} e820 entries",
        e820.len()
    );
    Ok(())
}

/// A setup header for a vmlinux, which has none of its own.
fn vmlinux_setup_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDRS_MAGIC,
        version: VMLINUX_BOOT_PROTOCOL,
        // The kernel sits above 1 MiB. KEEP_SEGMENTS is obsolete and CAN_USE_HEAP
        // only concerns the real-mode setup code, which a 64-bit entry skips.
        loadflags: LOADED_HIGH,
        cmdline_size: (CMDLINE_MAX_SIZE - 1) as u32,
        initrd_addr_max: 0x7fff_ffff,
        xloadflags: XLF_KERNEL_64,
        ..Default::default()
    }
}

/// Writes the command line, refusing one longer than the kernel takes. Returns its
/// length without the NUL.
fn write_cmdline<M: GuestMemoryBackend>(
    mem: &M,
    cmdline: &Cmdline,
    hdr: &setup_header,
) -> Result<usize> {
    let len = cmdline_len(cmdline);
    let mut max = CMDLINE_MAX_SIZE - 1;
    if hdr.version >= PROTOCOL_CMDLINE_SIZE {
        max = max.min(hdr.cmdline_size as usize);
    }
    if len > max {
        return Err(Error::CmdlineTooLong { len, max });
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(Error::WriteCmdline)?;
    Ok(len)
}

/// The e820 map of `mem`: the region at 0 split around the reserved EBDA and BIOS
/// area below 1 MiB, every other region as RAM. The MMIO gap, not being guest
/// memory, is absent from the map.
pub fn e820_entries<M: GuestMemoryBackend>(mem: &M) -> Result<Vec<boot_e820_entry>> {
    let entry = |addr: u64, end: u64, kind: u32| boot_e820_entry {
        addr,
        size: end - addr,
        r#type: kind,
    };
    let mut entries = Vec::new();
    for region in mem.iter() {
        let (start, end) = (region.start_addr().0, region.start_addr().0 + region.len());
        if start == 0 {
            if end < HIMEM_START {
                return Err(Error::NoLowMemory);
            }
            entries.push(entry(0, EBDA_START, E820_RAM));
            entries.push(entry(EBDA_START, HIMEM_START, E820_RESERVED));
            if end > HIMEM_START {
                entries.push(entry(HIMEM_START, end, E820_RAM));
            }
        } else {
            entries.push(entry(start, end, E820_RAM));
        }
    }
    if entries.first().map(|e| e.addr) != Some(0) {
        return Err(Error::NoLowMemory);
    }
    if entries.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(Error::TooManyE820Entries {
            count: entries.len(),
        });
    }
    Ok(entries)
}

/// `RNG_SEED_LEN` bytes from the host's getrandom.
fn rng_seed() -> Result<Vec<u8>> {
    let mut seed = vec![0u8; RNG_SEED_LEN];
    host_random(&mut seed).map_err(Error::RandomSeed)?;
    Ok(seed)
}

/// Fills `buf` from getrandom(2); std has no stable API for the system RNG.
fn host_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice
        // that the kernel fills with at most `rest.len()` bytes.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            continue;
        }
        filled += got as usize;
    }
    Ok(())
}

/// Writes `entries` (type, payload) as a linked setup_data list at SETUP_DATA_ADDR
/// and returns the address of its head (0 when there are no entries).
fn write_setup_data<M: GuestMemoryBackend>(mem: &M, entries: &[(u32, &[u8])]) -> Result<u64> {
    let mut list = Vec::new();
    for (i, (kind, payload)) in entries.iter().enumerate() {
        let entry_size = std::mem::size_of::<SetupData>() + payload.len();
        let next_offset = (list.len() + entry_size).next_multiple_of(SETUP_DATA_ALIGN as usize);
        let header = SetupData {
            next: if i + 1 < entries.len() {
                SETUP_DATA_ADDR + next_offset as u64
            } else {
                0
            },
            kind: *kind,
            len: payload.len() as u32,
        };
        list.extend_from_slice(header.as_slice());
        list.extend_from_slice(payload);
        list.resize(next_offset, 0);
    }
    if list.is_empty() {
        return Ok(0);
    }
    if list.len() as u64 > SETUP_DATA_MAX_SIZE {
        return Err(Error::SetupDataTooBig {
            size: list.len() as u64,
        });
    }
    write_bytes(mem, "setup_data list", SETUP_DATA_ADDR, &list)?;
    Ok(SETUP_DATA_ADDR)
}

fn write_bytes<M: GuestMemoryBackend>(
    mem: &M,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| Error::Write { what, addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::{create_guest_memory, MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    fn guest_memory(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn read_params(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap()
    }

    fn config(cmdline: &Cmdline) -> BootConfig<'_> {
        BootConfig {
            cmdline,
            initrd: None,
            setup_header: None,
        }
    }

    #[test]
    fn e820_splits_low_memory_around_the_bios_area() {
        let e820 = e820_entries(&guest_memory(64 * MIB)).unwrap();
        let got: Vec<(u64, u64, u32)> = e820.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            got,
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
                (HIMEM_START, 63 * MIB, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_leaves_the_mmio_gap_out() {
        let mem = create_guest_memory(MMIO_GAP_START + 64 * MIB).unwrap();
        let e820 = e820_entries(&mem).unwrap();
        assert_eq!(e820.len(), 4);
        assert_eq!({ e820[2].addr } + { e820[2].size }, MMIO_GAP_START);
        assert_eq!(
            ({ e820[3].addr }, { e820[3].size }),
            (MMIO_GAP_END, 64 * MIB)
        );
        for e in &e820 {
            let end = e.addr + e.size;
            assert!(end <= MMIO_GAP_START || e.addr >= MMIO_GAP_END);
        }
    }

    #[test]
    fn e820_refuses_memory_without_low_ram() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        assert!(matches!(e820_entries(&mem), Err(Error::NoLowMemory)));
    }

    #[test]
    fn vmlinux_zero_page_has_a_sane_header_and_pointers() {
        let mem = guest_memory(64 * MIB);
        let cmdline = build_cmdline("console=ttyS0 quiet", &[]).unwrap();
        let initrd = InitrdInfo {
            addr: GuestAddress(60 * MIB),
            size: 0x1234,
        };
        let config = BootConfig {
            initrd: Some(initrd),
            ..config(&cmdline)
        };
        write_boot_params(&mem, &config).unwrap();
        let params = read_params(&mem);
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert!({ hdr.version } >= 0x020a);
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.ramdisk_image }, 60 * MIB as u32);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!(params.e820_entries, 3);

        let mut text = [0u8; 20];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0 quiet\0");
    }

    #[test]
    fn bzimage_header_is_kept_and_completed() {
        let mem = guest_memory(64 * MIB);
        let cmdline = build_cmdline("console=ttyS0", &[]).unwrap();
        let image_hdr = setup_header {
            setup_sects: 27,
            version: 0x020f,
            cmdline_size: 2047,
            code32_start: HIMEM_START as u32,
            ..vmlinux_setup_header()
        };
        let config = BootConfig {
            setup_header: Some(image_hdr),
            ..config(&cmdline)
        };
        write_boot_params(&mem, &config).unwrap();
        let hdr = read_params(&mem).hdr;
        assert_eq!((hdr.setup_sects, hdr.type_of_loader), (27, 0xff));
        assert_eq!({ hdr.code32_start }, HIMEM_START as u32);
        assert_eq!({ hdr.ramdisk_image }, 0);
    }

    fn read_setup_data(mem: &GuestMemoryMmap, addr: u64) -> (SetupData, Vec<u8>) {
        let header: SetupData = mem.read_obj(GuestAddress(addr)).unwrap();
        let mut payload = vec![0u8; header.len as usize];
        mem.read_slice(&mut payload, GuestAddress(addr + 16))
            .unwrap();
        (header, payload)
    }

    #[test]
    fn setup_data_chain_holds_a_fresh_rng_seed() {
        let mem = guest_memory(64 * MIB);
        let cmdline = build_cmdline("quiet", &[]).unwrap();
        write_boot_params(&mem, &config(&cmdline)).unwrap();
        let head = { read_params(&mem).hdr.setup_data };
        assert_eq!(head, SETUP_DATA_ADDR);
        let (entry, first_seed) = read_setup_data(&mem, head);
        assert_eq!((entry.kind, entry.next), (SETUP_RNG_SEED, 0));
        assert_eq!(first_seed.len(), RNG_SEED_LEN);
        assert!(first_seed.iter().any(|&b| b != 0));

        write_boot_params(&mem, &config(&cmdline)).unwrap();
        let (_, second_seed) = read_setup_data(&mem, head);
        assert_ne!(first_seed, second_seed, "each boot must get its own seed");
    }

    #[test]
    fn setup_data_entries_link_to_each_other() {
        let mem = guest_memory(4 * MIB);
        let head = write_setup_data(&mem, &[(7, &[1, 2, 3]), (SETUP_RNG_SEED, &[9; 32])]).unwrap();
        let (first, payload) = read_setup_data(&mem, head);
        assert_eq!((first.kind, payload), (7, vec![1, 2, 3]));
        // 16-byte header + 3 bytes, rounded up to 8.
        assert_eq!(first.next, SETUP_DATA_ADDR + 24);
        let (second, payload) = read_setup_data(&mem, first.next);
        assert_eq!(
            (second.kind, second.next, payload),
            (SETUP_RNG_SEED, 0, vec![9; 32])
        );
    }

    #[test]
    fn old_boot_protocol_gets_no_setup_data() {
        let mem = guest_memory(64 * MIB);
        let cmdline = build_cmdline("quiet", &[]).unwrap();
        let config = BootConfig {
            setup_header: Some(setup_header {
                version: 0x0208,
                ..vmlinux_setup_header()
            }),
            ..config(&cmdline)
        };
        write_boot_params(&mem, &config).unwrap();
        assert_eq!({ read_params(&mem).hdr.setup_data }, 0);
    }

    #[test]
    fn cmdline_joins_base_and_extra_before_init_args() {
        let extra = vec!["noxsave".to_string(), "clearcpuid=popcnt".to_string()];
        let cmdline = build_cmdline("console=ttyS0 -- init-arg", &extra).unwrap();
        let text = cmdline.as_cstring().unwrap();
        assert_eq!(
            text.to_str().unwrap(),
            "console=ttyS0 noxsave clearcpuid=popcnt -- init-arg"
        );
    }

    #[test]
    fn cmdline_too_long_is_refused() {
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            build_cmdline(&long, &[]),
            Err(Error::CmdlineTooLong { len, max: 2047 }) if len == CMDLINE_MAX_SIZE
        ));
        let base = "y".repeat(CMDLINE_MAX_SIZE - 10);
        let err = build_cmdline(&base, &["0123456789".to_string()]).unwrap_err();
        assert!(matches!(err, Error::CmdlineTooLong { .. }), "{err}");
        assert!(build_cmdline(&"z".repeat(CMDLINE_MAX_SIZE - 1), &[]).is_ok());
    }

    #[test]
    fn cmdline_longer_than_the_kernel_takes_is_refused() {
        let mem = guest_memory(64 * MIB);
        let cmdline = build_cmdline(&"a".repeat(300), &[]).unwrap();
        let config = BootConfig {
            setup_header: Some(setup_header {
                cmdline_size: 255,
                ..vmlinux_setup_header()
            }),
            ..config(&cmdline)
        };
        assert!(matches!(
            write_boot_params(&mem, &config),
            Err(Error::CmdlineTooLong { len: 300, max: 255 })
        ));
    }

    #[test]
    fn cmdline_with_control_characters_is_refused() {
        assert!(matches!(
            build_cmdline("console=ttyS0\n", &[]),
            Err(Error::InvalidCmdline { .. })
        ));
        assert!(matches!(
            build_cmdline("quiet", &["tab\there".to_string()]),
            Err(Error::InvalidCmdline { .. })
        ));
    }
}
