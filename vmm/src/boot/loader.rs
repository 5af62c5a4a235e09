//! Loading the guest kernel (an ELF vmlinux or a bzImage) and its initrd into
//! guest memory.
//!
//! linux-loader does the copying; this module first recognises the format, checks
//! that the image is an x86_64 kernel with a 64-bit entry point and that it fits in
//! guest RAM, so that a wrong file or too little memory gets a clear error.

use std::io::{self, Read, Seek, SeekFrom};
use std::mem::size_of;

use linux_loader::bootparam::{setup_header, XLF_KERNEL_64};
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, EI_CLASS, ELFCLASS64, EM_X86_64, PT_LOAD};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use log::{debug, info};
use thiserror::Error;
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
    ReadVolatile,
};

use super::layout::{HIMEM_START, MMIO_GAP_START, PAGE_SIZE};

/// Offset of the setup header in a bzImage, and of its "HdrS" magic.
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
const HDRS_OFFSET: usize = 0x202;
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// The 64-bit entry point of a bzImage's protected-mode kernel, from its start.
const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;
/// Where the initrd may end when the kernel names no limit (boot protocol default
/// before 2.03 is lower, but every 64-bit kernel sets initrd_addr_max).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

/// The format of a kernel image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// An uncompressed ELF vmlinux, entered at its ELF entry point.
    Elf,
    /// A bzImage, whose protected-mode kernel decompresses itself.
    BzImage,
}

/// A kernel loaded into guest memory.
#[derive(Clone, Copy, Debug)]
pub struct KernelImage {
    /// The format that was loaded.
    pub kind: KernelKind,
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    /// Where the image was loaded (lowest ELF segment, or the bzImage's kernel).
    pub load_addr: GuestAddress,
    /// First byte past the memory the kernel claims at boot (for a bzImage this
    /// covers the decompression area, `init_size`).
    pub kernel_end: u64,
    /// The bzImage's setup header; `None` for a vmlinux.
    pub setup_header: Option<setup_header>,
}

/// An initrd loaded into guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdInfo {
    /// Guest physical address of the first byte (page-aligned).
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: usize,
}

/// Errors from loading the kernel or the initrd.
#[derive(Debug, Error)]
pub enum Error {
    /// The file has neither format's magic.
    #[error("the kernel image is not a Linux kernel: neither an ELF vmlinux nor a bzImage")]
    NotAKernel,
    /// Reading the kernel file failed.
    #[error("could not read the kernel image")]
    ReadKernel(#[source] io::Error),
    /// The file ends inside a header it announces.
    #[error("the kernel image is truncated: its headers run past the end of the file")]
    Truncated,
    /// An ELF file that is not a 64-bit x86 executable.
    #[error("the kernel image is an ELF file but not an x86_64 vmlinux: {0}")]
    UnsupportedElf(&'static str),
    /// A bzImage too old for the 64-bit boot protocol.
    #[error(
        "the bzImage (boot protocol {version:#06x}) has no 64-bit entry point: \
         use a kernel with boot protocol 2.12 or later built for x86_64"
    )]
    BzImageNot64Bit {
        /// The image's boot protocol version.
        version: u16,
    },
    /// A kernel segment would overlap the boot structures below 1 MiB.
    #[error("the kernel wants to load at {addr:#x}, below {HIMEM_START:#x} where boot data lives")]
    BelowHimem {
        /// The segment's physical address.
        addr: u64,
    },
    /// The kernel does not fit in guest RAM.
    #[error(
        "the kernel needs guest memory {start:#x}..{end:#x}, which is not all RAM: \
         give the guest more memory"
    )]
    KernelTooBig {
        /// First byte the kernel needs.
        start: u64,
        /// First byte past what it needs.
        end: u64,
    },
    /// linux-loader refused the image.
    #[error("could not load the kernel image into guest memory")]
    Load(#[source] linux_loader::loader::Error),
    /// The initrd file is empty.
    #[error("the initrd is empty: give a cpio archive")]
    EmptyInitrd,
    /// Reading the initrd file failed.
    #[error("could not read the initrd")]
    ReadInitrd(#[source] io::Error),
    /// Kernel and initrd do not both fit in low RAM.
    #[error(
        "the initrd ({size:#x} bytes) does not fit between the kernel's end at \
         {kernel_end:#x} and {limit:#x}: give the guest more memory"
    )]
    InitrdTooBig {
        /// The initrd size.
        size: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Highest end address the initrd may have.
        limit: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("could not copy the initrd into guest memory at {addr:#x}")]
    WriteInitrd {
        /// Where it was to go.
        addr: u64,
        /// What guest memory reported.
        #[source]
        source: GuestMemoryError,
    },
}

type Result<T> = std::result::Result<T, Error>;

/// Loads the kernel in `kernel`, an ELF vmlinux or a bzImage, into `mem`.
pub fn load_kernel<M, F>(mem: &M, kernel: &mut F) -> Result<KernelImage>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let image = match detect_kind(kernel)? {
        KernelKind::Elf => load_elf(mem, kernel)?,
        KernelKind::BzImage => load_bzimage(mem, kernel)?,
    };
    info!(
        "kernel loaded: {:?} at {:#x}..{:#x}, entry {:#x}",
        image.kind, image.load_addr.0, image.kernel_end, image.entry.0
    );
    Ok(image)
}

/// Tells a vmlinux from a bzImage by their magic numbers.
fn detect_kind<F: Read + Seek>(kernel: &mut F) -> Result<KernelKind> {
    let mut head = Vec::with_capacity(HDRS_OFFSET + 4);
    kernel.rewind().map_err(Error::ReadKernel)?;
    kernel
        .take((HDRS_OFFSET + 4) as u64)
        .read_to_end(&mut head)
        .map_err(Error::ReadKernel)?;
    if head.starts_with(ELF_MAGIC) {
        Ok(KernelKind::Elf)
    } else if head.get(HDRS_OFFSET..) == Some(HDRS_MAGIC) {
        Ok(KernelKind::BzImage)
    } else {
        Err(Error::NotAKernel)
    }
}

fn load_elf<M, F>(mem: &M, kernel: &mut F) -> Result<KernelImage>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let ehdr: Elf64_Ehdr = read_obj_at(kernel, 0)?;
    check_elf_header(&ehdr)?;
    let (start, end) = elf_load_range(kernel, &ehdr)?;
    check_fits(mem, start, end)?;

    let loaded =
        Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(Error::Load)?;
    Ok(KernelImage {
        kind: KernelKind::Elf,
        entry: GuestAddress(ehdr.e_entry),
        load_addr: GuestAddress(start),
        kernel_end: loaded.kernel_end,
        setup_header: None,
    })
}

fn check_elf_header(ehdr: &Elf64_Ehdr) -> Result<()> {
    if ehdr.e_ident[EI_CLASS] != ELFCLASS64 {
        return Err(Error::UnsupportedElf("it is not a 64-bit ELF file"));
    }
    if ehdr.e_machine != EM_X86_64 {
        return Err(Error::UnsupportedElf("its machine type is not x86_64"));
    }
    if usize::from(ehdr.e_phentsize) != size_of::<Elf64_Phdr>() {
        return Err(Error::UnsupportedElf("its program header size is wrong"));
    }
    Ok(())
}

/// The physical range `[start, end)` covered by the loadable segments.
fn elf_load_range<F: Read + Seek>(kernel: &mut F, ehdr: &Elf64_Ehdr) -> Result<(u64, u64)> {
    let mut range: Option<(u64, u64)> = None;
    for i in 0..u64::from(ehdr.e_phnum) {
        let offset = ehdr.e_phoff + i * size_of::<Elf64_Phdr>() as u64;
        let phdr: Elf64_Phdr = read_obj_at(kernel, offset)?;
        if phdr.p_type != PT_LOAD || phdr.p_memsz == 0 {
            continue;
        }
        if phdr.p_paddr < HIMEM_START {
            return Err(Error::BelowHimem { addr: phdr.p_paddr });
        }
        let end = phdr
            .p_paddr
            .checked_add(phdr.p_memsz)
            .ok_or(Error::KernelTooBig {
                start: phdr.p_paddr,
                end: u64::MAX,
            })?;
        let (lo, hi) = range.unwrap_or((phdr.p_paddr, end));
        range = Some((lo.min(phdr.p_paddr), hi.max(end)));
    }
    range.ok_or(Error::UnsupportedElf("it has no loadable segment"))
}

fn load_bzimage<M, F>(mem: &M, kernel: &mut F) -> Result<KernelImage>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let hdr: setup_header = read_obj_at(kernel, SETUP_HEADER_OFFSET)?;
    if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::BzImageNot64Bit {
            version: hdr.version,
        });
    }
    let load = HIMEM_START;
    let footprint = bzimage_payload_len(kernel, &hdr)?.max(u64::from(hdr.init_size));
    check_fits(mem, load, load + footprint)?;

    let loaded = BzImage::load(mem, Some(GuestAddress(load)), kernel, None).map_err(Error::Load)?;
    Ok(KernelImage {
        kind: KernelKind::BzImage,
        entry: GuestAddress(load + BZIMAGE_ENTRY_64_OFFSET),
        load_addr: GuestAddress(load),
        kernel_end: loaded.kernel_end.max(load + u64::from(hdr.init_size)),
        setup_header: loaded.setup_header,
    })
}

/// Size of the protected-mode kernel: the file after its real-mode setup sectors.
fn bzimage_payload_len<F: Seek>(kernel: &mut F, hdr: &setup_header) -> Result<u64> {
    // Per the boot protocol, a setup_sects of 0 means 4.
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let file_len = kernel.seek(SeekFrom::End(0)).map_err(Error::ReadKernel)?;
    file_len
        .checked_sub((setup_sects + 1) * 512)
        .ok_or(Error::Truncated)
}

/// Refuses a kernel whose range `[start, end)` is not all guest RAM.
fn check_fits<M: GuestMemoryBackend>(mem: &M, start: u64, end: u64) -> Result<()> {
    let len = usize::try_from(end - start).unwrap_or(usize::MAX);
    if !mem.check_range(GuestAddress(start), len) {
        return Err(Error::KernelTooBig { start, end });
    }
    Ok(())
}

fn read_obj_at<T: ByteValued + Default, F: Read + Seek>(file: &mut F, offset: u64) -> Result<T> {
    let mut obj = T::default();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(obj.as_mut_slice()))
        .map_err(|e| match e.kind() {
            // A file too short for the header it claims is not a usable kernel.
            io::ErrorKind::UnexpectedEof => Error::Truncated,
            _ => Error::ReadKernel(e),
        })?;
    Ok(obj)
}

/// Loads the initrd in `initrd` page-aligned as high as allowed: below the end of
/// low RAM, the MMIO gap and the kernel's `initrd_addr_max`, above the kernel.
pub fn load_initrd<M, F>(mem: &M, initrd: &mut F, kernel: &KernelImage) -> Result<InitrdInfo>
where
    M: GuestMemoryBackend,
    F: ReadVolatile + Seek,
{
    let size = initrd.seek(SeekFrom::End(0)).map_err(Error::ReadInitrd)?;
    if size == 0 {
        return Err(Error::EmptyInitrd);
    }
    let addr = initrd_placement(mem, size, kernel)?;
    initrd.rewind().map_err(Error::ReadInitrd)?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, size as usize)
        .map_err(|source| Error::WriteInitrd { addr, source })?;
    info!("initrd loaded: {size:#x} bytes at {addr:#x}");
    Ok(InitrdInfo {
        addr: GuestAddress(addr),
        size: size as usize,
    })
}

/// The page-aligned address for an initrd of `size` bytes.
fn initrd_placement<M: GuestMemoryBackend>(
    mem: &M,
    size: u64,
    kernel: &KernelImage,
) -> Result<u64> {
    let addr_max = kernel.setup_header.map_or(DEFAULT_INITRD_ADDR_MAX, |hdr| {
        u64::from(hdr.initrd_addr_max)
    });
    let limit = low_ram_end(mem).min(MMIO_GAP_START).min(addr_max + 1);
    let lowest = kernel.kernel_end.next_multiple_of(PAGE_SIZE);
    let too_big = || Error::InitrdTooBig {
        size,
        kernel_end: kernel.kernel_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE - 1);
    if addr < lowest {
        return Err(too_big());
    }
    debug!("initrd placement: {addr:#x}, limit {limit:#x}, kernel end {lowest:#x}");
    Ok(addr)
}

/// End of the guest RAM region that starts at address 0 (0 if there is none).
fn low_ram_end<M: GuestMemoryBackend>(mem: &M) -> u64 {
    mem.find_region(GuestAddress(0))
        .map_or(0, |region| region.start_addr().0 + region.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    fn guest_memory(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    /// A minimal x86_64 ELF executable: one PT_LOAD segment of `code` at `paddr`
    /// with `bss` extra zero bytes, entered at its start.
    fn tiny_elf(paddr: u64, code: &[u8], bss: u64) -> Vec<u8> {
        let phoff = size_of::<Elf64_Ehdr>() as u64;
        let code_off = phoff + size_of::<Elf64_Phdr>() as u64;
        let mut ehdr = Elf64_Ehdr {
            e_type: 2,
            e_machine: EM_X86_64,
            e_version: 1,
            e_entry: paddr,
            e_phoff: phoff,
            e_ehsize: phoff as u16,
            e_phentsize: size_of::<Elf64_Phdr>() as u16,
            e_phnum: 1,
            ..Default::default()
        };
        ehdr.e_ident[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        let phdr = Elf64_Phdr {
            p_type: PT_LOAD,
            p_flags: 5,
            p_offset: code_off,
            p_vaddr: 0xffff_ffff_8000_0000 + paddr,
            p_paddr: paddr,
            p_filesz: code.len() as u64,
            p_memsz: code.len() as u64 + bss,
            p_align: 0x1000,
        };
        [ehdr.as_slice(), phdr.as_slice(), code].concat()
    }

    /// A bzImage-shaped file: boot sector and setup header, one setup sector, then
    /// `payload` as the protected-mode kernel.
    fn tiny_bzimage(version: u16, xloadflags: u16, payload: &[u8]) -> Vec<u8> {
        let hdr = setup_header {
            setup_sects: 1,
            boot_flag: 0xaa55,
            header: u32::from_le_bytes(*HDRS_MAGIC),
            version,
            loadflags: 1,
            code32_start: HIMEM_START as u32,
            initrd_addr_max: 0x7fff_ffff,
            xloadflags,
            init_size: 0x40_0000,
            ..Default::default()
        };
        let mut image = vec![0u8; 1024];
        let at = SETUP_HEADER_OFFSET as usize;
        image[at..at + size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
        image.extend_from_slice(payload);
        image
    }

    #[test]
    fn loads_an_elf_vmlinux_at_its_physical_address() {
        let mem = guest_memory(32 * MIB);
        let code = [0xf4u8, 0xeb, 0xfd]; // hlt; jmp back
        let mut file = Cursor::new(tiny_elf(16 * MIB, &code, 0x1000));
        let image = load_kernel(&mem, &mut file).unwrap();
        assert_eq!(image.kind, KernelKind::Elf);
        assert_eq!(image.entry, GuestAddress(16 * MIB));
        assert_eq!(image.kernel_end, 16 * MIB + 3 + 0x1000);
        assert!(image.setup_header.is_none());
        let mut loaded = [0u8; 3];
        mem.read_slice(&mut loaded, GuestAddress(16 * MIB)).unwrap();
        assert_eq!(loaded, code);
    }

    #[test]
    fn elf_that_does_not_fit_is_refused() {
        let mem = guest_memory(16 * MIB);
        let mut file = Cursor::new(tiny_elf(16 * MIB - 0x1000, &[0x90; 16], 0x2000));
        assert!(matches!(
            load_kernel(&mem, &mut file),
            Err(Error::KernelTooBig { end, .. }) if end == 16 * MIB + 0x1010
        ));
    }

    #[test]
    fn elf_below_1mib_is_refused() {
        let mem = guest_memory(16 * MIB);
        let mut file = Cursor::new(tiny_elf(0x8000, &[0x90; 16], 0));
        assert!(matches!(
            load_kernel(&mem, &mut file),
            Err(Error::BelowHimem { addr: 0x8000 })
        ));
    }

    #[test]
    fn elf_for_another_machine_is_refused() {
        let mem = guest_memory(32 * MIB);
        let mut elf = tiny_elf(16 * MIB, &[0x90; 16], 0);
        elf[18] = 183; // e_machine = AArch64
        let err = load_kernel(&mem, &mut Cursor::new(elf)).unwrap_err();
        assert!(err.to_string().contains("not x86_64"), "{err}");
    }

    #[test]
    fn a_non_kernel_file_is_refused_with_a_clear_message() {
        let mem = guest_memory(16 * MIB);
        for content in [b"#!/bin/sh\necho hello\n".to_vec(), vec![], vec![0u8; 8192]] {
            let err = load_kernel(&mem, &mut Cursor::new(content)).unwrap_err();
            assert!(matches!(err, Error::NotAKernel));
            assert!(err
                .to_string()
                .contains("neither an ELF vmlinux nor a bzImage"));
        }
    }

    #[test]
    fn loads_a_bzimage_at_1mib_with_the_64_bit_entry() {
        let mem = guest_memory(32 * MIB);
        let payload = vec![0xabu8; 0x3000];
        let mut file = Cursor::new(tiny_bzimage(0x020f, XLF_KERNEL_64, &payload));
        let image = load_kernel(&mem, &mut file).unwrap();
        assert_eq!(image.kind, KernelKind::BzImage);
        assert_eq!(image.entry, GuestAddress(HIMEM_START + 0x200));
        assert_eq!(image.kernel_end, HIMEM_START + 0x40_0000);
        assert_eq!({ image.setup_header.unwrap().version }, 0x020f);
        let byte: u8 = mem.read_obj(GuestAddress(HIMEM_START + 0x2fff)).unwrap();
        assert_eq!(byte, 0xab);
    }

    #[test]
    fn bzimage_without_64_bit_entry_is_refused() {
        let mem = guest_memory(32 * MIB);
        let mut file = Cursor::new(tiny_bzimage(0x020f, 0, &[0; 512]));
        assert!(matches!(
            load_kernel(&mem, &mut file),
            Err(Error::BzImageNot64Bit { version: 0x020f })
        ));
    }

    #[test]
    fn bzimage_needing_more_than_memory_is_refused() {
        let mem = guest_memory(4 * MIB);
        let mut file = Cursor::new(tiny_bzimage(0x020f, XLF_KERNEL_64, &[0; 512]));
        assert!(matches!(
            load_kernel(&mem, &mut file),
            Err(Error::KernelTooBig { .. })
        ));
    }

    fn elf_kernel_ending_at(kernel_end: u64) -> KernelImage {
        KernelImage {
            kind: KernelKind::Elf,
            entry: GuestAddress(16 * MIB),
            load_addr: GuestAddress(16 * MIB),
            kernel_end,
            setup_header: None,
        }
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_of_low_ram() {
        let mem = guest_memory(64 * MIB);
        let content = vec![0x5au8; 0x1800];
        let kernel = elf_kernel_ending_at(20 * MIB);
        let info = load_initrd(&mem, &mut Cursor::new(content), &kernel).unwrap();
        assert_eq!(info.size, 0x1800);
        assert_eq!(info.addr, GuestAddress(64 * MIB - 0x2000));
        let last: u8 = mem.read_obj(GuestAddress(64 * MIB - 0x801)).unwrap();
        assert_eq!(last, 0x5a);
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let mem = guest_memory(64 * MIB);
        let mut kernel = elf_kernel_ending_at(2 * MIB);
        kernel.setup_header = Some(setup_header {
            initrd_addr_max: (32 * MIB - 1) as u32,
            ..Default::default()
        });
        let info = load_initrd(&mem, &mut Cursor::new(vec![1u8; 100]), &kernel).unwrap();
        assert_eq!(info.addr, GuestAddress(32 * MIB - 0x1000));
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_refused() {
        let mem = guest_memory(32 * MIB);
        let kernel = elf_kernel_ending_at(30 * MIB);
        let content = vec![0u8; (2 * MIB + 1) as usize];
        let err = load_initrd(&mem, &mut Cursor::new(content), &kernel).unwrap_err();
        assert!(matches!(err, Error::InitrdTooBig { limit, .. } if limit == 32 * MIB));
        assert!(err.to_string().contains("give the guest more memory"));
        let huge = vec![0u8; (33 * MIB) as usize];
        assert!(matches!(
            load_initrd(&mem, &mut Cursor::new(huge), &kernel),
            Err(Error::InitrdTooBig { .. })
        ));
    }

    #[test]
    fn empty_initrd_is_refused() {
        let mem = guest_memory(32 * MIB);
        let kernel = elf_kernel_ending_at(20 * MIB);
        assert!(matches!(
            load_initrd(&mem, &mut Cursor::new(Vec::new()), &kernel),
            Err(Error::EmptyInitrd)
        ));
    }
}
