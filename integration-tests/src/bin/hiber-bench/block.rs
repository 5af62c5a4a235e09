//! Block figures inside the guest: `hiber-blkbench` on the raw virtio disk
//! (/dev/vda, O_DIRECT, one request at a time), the same image contents
//! under Hiber and under QEMU's virtio-mmio `microvm` (each its own copy,
//! since the two guests run side by side).
//!
//! Both VMMs serve the image through the host page cache (Hiber reads and
//! writes the file without O_DIRECT; QEMU runs with `cache=writeback`, not
//! `cache=none`, to match), and the images are written just before the
//! runs, so the figures are those of the virtio path and the VMM, not of
//! the host's disk.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use integration_tests::{scratch_dir, Vmm};

use crate::qemu::{Machine, QemuGuest};
use crate::{median, AgentShell, BOOT_TIMEOUT, STEP};

/// The image both VMMs get.
const IMAGE_MIB: usize = 256;
/// Each mode runs this many times in one boot; the median is printed.
const REPEATS: usize = 3;

/// What the setups do differently, printed with the figures.
const SETUPS: &str = "hiber: its own board (in-kernel PIC and PIT), virtio-mmio, one queue \
    of 256 without indirect descriptors or event index, seg_max 128 of 256 KiB, requests served \
    in order with pread/pwrite on its device thread | qemu: microvm (qboot, no PIT, PIC or RTC), \
    virtio-blk-device (indirect descriptors, event index, seg_max 254), cache=writeback, \
    aio=threads, no iothread";

/// One `hiber-blkbench` mode and how much it moves.
struct Mode {
    name: &'static str,
    mib: u32,
    /// 4 KiB random requests, reported as IOPS; else 1 MiB sequential, as MB/s.
    random: bool,
}

const MODES: [Mode; 4] = [
    Mode {
        name: "seqread",
        mib: 16,
        random: false,
    },
    Mode {
        name: "randread",
        mib: 1,
        random: true,
    },
    Mode {
        name: "seqwrite",
        mib: 16,
        random: false,
    },
    Mode {
        name: "randwrite",
        mib: 1,
        random: true,
    },
];

impl Mode {
    fn unit(&self) -> &'static str {
        if self.random {
            "IOPS"
        } else {
            "MB/s"
        }
    }
}

/// One line of `hiber-blkbench` output.
#[derive(Debug, PartialEq, Eq)]
struct BlkRun {
    bytes: u64,
    ns: u64,
    ops: u64,
}

impl BlkRun {
    /// MB/s (decimal megabytes) for a sequential mode, IOPS for a random one.
    fn figure(&self, random: bool) -> f64 {
        let secs = self.ns as f64 / 1e9;
        if random {
            self.ops as f64 / secs
        } else {
            self.bytes as f64 / 1e6 / secs
        }
    }
}

/// Finds `hiber-blkbench: MODE key=value ...` in `output`.
fn parse_line(output: &str, mode: &str) -> Result<BlkRun, String> {
    let prefix = format!("hiber-blkbench: {mode} ");
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .ok_or_else(|| format!("no '{prefix}...' line in the guest's output:\n{output}"))?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("no number {key}= in '{line}'"))
    };
    let run = BlkRun {
        bytes: field("bytes")?,
        ns: field("ns")?,
        ops: field("ops")?,
    };
    if run.ns == 0 || run.ops == 0 {
        return Err(format!("'{line}' timed nothing"));
    }
    Ok(run)
}

/// Writes a raw image of `mib` MiB of pseudo-random bytes (not zeros, so
/// that reads move real data).
fn make_image(path: &Path, mib: usize) -> io::Result<()> {
    let mut file = io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk)?;
    }
    file.into_inner()?.sync_all()
}

/// One VMM's guest in the comparison, and its figures so far.
struct Contender<'a> {
    name: &'static str,
    /// The guest, or why it is not measured.
    guest: Result<&'a dyn AgentShell, String>,
    /// The median figure of each mode measured so far.
    medians: Vec<f64>,
}

/// One `hiber-blkbench` run of `mode`: its MB/s or IOPS.
fn run_mode(guest: &dyn AgentShell, mode: &Mode) -> Result<f64, String> {
    let cmd = format!("hiber-blkbench /dev/vda {} {}", mode.name, mode.mib);
    let r = guest.run(&cmd, STEP)?;
    if r.status != 0 {
        return Err(format!("'{cmd}' exited with {}:\n{}", r.status, r.output));
    }
    Ok(parse_line(&r.output, mode.name)?.figure(mode.random))
}

/// Runs `mode` `REPEATS` times in every guest, the guests taking turns so
/// that a change in the machine's load falls on all of them; prints each
/// guest's runs. A guest whose run fails is not measured further.
fn measure_mode(contenders: &mut [Contender], mode: &Mode) {
    let mut runs = vec![Vec::new(); contenders.len()];
    for _ in 0..REPEATS {
        for (c, runs) in contenders.iter_mut().zip(&mut runs) {
            let Ok(guest) = c.guest else { continue };
            match run_mode(guest, mode) {
                Ok(figure) => runs.push(figure),
                Err(e) => c.guest = Err(e),
            }
        }
    }
    for (c, runs) in contenders.iter_mut().zip(runs) {
        if c.guest.is_ok() {
            let list: Vec<String> = runs.iter().map(|f| format!("{f:.1}")).collect();
            println!(
                "    {:<5} {:<9} {} {}",
                c.name,
                mode.name,
                list.join(", "),
                mode.unit()
            );
            c.medians.push(median(runs));
        }
    }
}

/// Boots the test guest under Hiber with the drive; the agent is not
/// waited for.
fn start_hiber(dir: &Path, image: &Path) -> Vmm {
    let drive = format!("path={}", image.display());
    Vmm::boot(dir, &["--drive", &drive])
}

/// Starts QEMU's microvm with the drive; the agent is not waited for.
fn start_qemu(dir: &Path, image: &Path) -> Result<QemuGuest, String> {
    let drive = format!(
        "id=d0,file={},format=raw,if=none,cache=writeback,aio=threads",
        image.display()
    );
    let extra = ["-drive", &drive, "-device", "virtio-blk-device,drive=d0"].map(String::from);
    QemuGuest::spawn(Machine::Microvm, &extra, dir)
        .ok_or_else(|| "qemu-system-x86_64 is missing or did not start".to_string())
}

fn print_medians(hiber: &Contender, qemu: &Contender) {
    for (i, mode) in MODES.iter().enumerate() {
        let unit = mode.unit();
        let block = if mode.random { "4 KiB" } else { "1 MiB" };
        let cell = |c: &Contender| match c.medians.get(i) {
            Some(f) => format!("{f:>8.1} {unit}"),
            None => format!("{:>8} {unit}", "-"),
        };
        let ratio = match (hiber.medians.get(i), qemu.medians.get(i)) {
            (Some(h), Some(q)) => format!(" | qemu/hiber {:.2}x", q / h),
            _ => String::new(),
        };
        println!(
            "  {:<9} {block}, {:>2} MiB: hiber {} | qemu {}{ratio}",
            mode.name,
            mode.mib,
            cell(hiber),
            cell(qemu)
        );
    }
    for c in [hiber, qemu] {
        if let Err(e) = &c.guest {
            println!("  {}: not measured: {e}", c.name);
        }
    }
}

/// Writes the image and a copy of it (each VMM gets its own file, so
/// neither sees the other's lock or writes).
fn make_images(dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let hiber = dir.join("disk-hiber.img");
    let qemu = dir.join("disk-qemu.img");
    make_image(&hiber, IMAGE_MIB)?;
    std::fs::copy(&hiber, &qemu)?;
    Ok((hiber, qemu))
}

/// The block comparison: both guests booted side by side, then each mode
/// run in turn in one and the other.
pub fn section() {
    println!(
        "block (hiber-blkbench on /dev/vda, O_DIRECT, queue depth 1, a {IMAGE_MIB} MiB raw \
         image in the host page cache; 128 MiB, 1 vCPU; both guests booted, then the {REPEATS} \
         runs of each mode alternating between them; medians):"
    );
    println!("  setups: {SETUPS}");
    let dir = scratch_dir("bench-block");
    let (hiber_image, qemu_image) = match make_images(&dir) {
        Ok(images) => images,
        Err(e) => return println!("  not measured: cannot write the images: {e}"),
    };
    let vmm = start_hiber(&dir, &hiber_image);
    let qemu = start_qemu(&dir, &qemu_image);
    vmm.wait_for("hiber-agent: listening", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", vmm.log()));
    let qemu_guest = qemu.as_ref().map_err(String::clone).and_then(|q| {
        q.wait_for("hiber-agent: listening", BOOT_TIMEOUT)?;
        Ok(q as &dyn AgentShell)
    });
    let mut contenders = [
        Contender {
            name: "hiber",
            guest: Ok(&vmm),
            medians: Vec::new(),
        },
        Contender {
            name: "qemu",
            guest: qemu_guest,
            medians: Vec::new(),
        },
    ];
    println!("  runs:");
    for mode in &MODES {
        measure_mode(&mut contenders, mode);
    }
    println!("  medians:");
    print_medians(&contenders[0], &contenders[1]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blkbench_line_is_parsed_among_other_output() {
        let out = "noise\nhiber-blkbench: seqread bytes=2097152 ns=1000000 ops=2 block=1048576 \
                   flush_ns=0\n";
        let run = parse_line(out, "seqread").unwrap();
        assert_eq!(
            run,
            BlkRun {
                bytes: 2 << 20,
                ns: 1_000_000,
                ops: 2
            }
        );
        assert!((run.figure(false) - 2097.152).abs() < 1e-9);
        assert!((run.figure(true) - 2000.0).abs() < 1e-9);
    }

    #[test]
    fn a_missing_or_broken_line_is_an_error() {
        assert!(parse_line("hiber-blkbench: seqwrite bytes=1 ns=1 ops=1", "seqread").is_err());
        assert!(parse_line("hiber-blkbench: seqread bytes=x ns=1 ops=1", "seqread").is_err());
        assert!(parse_line("hiber-blkbench: seqread bytes=1 ns=0 ops=1", "seqread").is_err());
    }

    #[test]
    fn the_image_is_filled_with_data() {
        let dir = std::env::temp_dir().join(format!("hiber-bench-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        make_image(&path, 2).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(bytes.len(), 2 << 20);
        assert!(bytes.chunks(4096).all(|page| page.iter().any(|&b| b != 0)));
        assert_ne!(bytes[..4096], bytes[1 << 20..(1 << 20) + 4096]);
    }
}
