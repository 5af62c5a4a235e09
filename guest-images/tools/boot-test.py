#!/usr/bin/env python3
"""Boot the Hiber test guest under QEMU/KVM and drive its console agent.

Checks, in order: the readiness line, `run 1 echo hi`, that `nproc` matches
-smp, (on microvm) that the ext4 data disk reads back over virtio-blk, a short
hiber-workload run, then (on pc) that `reboot -f` ends QEMU. Prints every console line with the
wall time since QEMU started, and a summary of the timings at the end.

This needs no Hiber code: it is the reference the VMM's own tests compare
with. It does not prove anything about snapshots.
"""

import argparse
import os
import select
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "out")

# What the guest needs on any host.
BASE_CMDLINE = [
    "console=ttyS0",
    "reboot=k",
    "panic=-1",
    "quiet",
    "init_on_alloc=0",
    "cryptomgr.notests",
    "random.trust_cpu=on",
]

# For a host whose KVM runs the guest kernel through its instruction emulator
# (nested "PVM" KVM): features whose instructions the emulator cannot run,
# and erms/fsrm, whose byte-wise `rep movsb`/`rep stosb` it runs one byte at
# a time. Harmless, though not needed, elsewhere. The kernel keeps only the
# last clearcpuid= and reads at most 127 characters of it; noxsave also
# hides AVX, AVX2 and AVX-512.
EMULATOR_CMDLINE = [
    "noxsave",
    "clearcpuid=popcnt,smap,fsgsbase,pcid,invpcid,rdpid,clflushopt,clwb,umip,"
    "erms,fsrm,ssse3,sse4_2,movbe",
]


class Console:
    """The guest's serial console on QEMU's stdio."""

    def __init__(self, proc, start, log):
        self.proc = proc
        self.start = start
        self.log = log
        self.buf = b""
        self.lines = []

    def elapsed(self):
        return time.monotonic() - self.start

    def send(self, line):
        self.log.write(f"[{self.elapsed():7.1f}] >>> {line}\n")
        self.log.flush()
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def _read_some(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return True
        data = os.read(self.proc.stdout.fileno(), 4096)
        if not data:
            return False
        self.buf += data
        while b"\n" in self.buf:
            raw, self.buf = self.buf.split(b"\n", 1)
            line = raw.decode(errors="replace").rstrip("\r")
            self.lines.append(line)
            self.log.write(f"[{self.elapsed():7.1f}] {line}\n")
            self.log.flush()
        return True

    def expect(self, predicate, timeout, what):
        """Waits for a line matching predicate; returns (line, elapsed)."""
        deadline = time.monotonic() + timeout
        seen = len(self.lines)
        while True:
            while seen < len(self.lines):
                line = self.lines[seen]
                seen += 1
                if predicate(line):
                    return line, self.elapsed()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {what} within {timeout:.0f} s")
            if not self._read_some(min(left, 1.0)):
                raise EOFError(f"QEMU exited while waiting for {what}")

    def drain_until_exit(self, timeout):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if not self._read_some(0.5):
                break
        try:
            return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None


def qemu_command(args, cmdline):
    cpu = ("host,-arch-capabilities,-cx16,-kvm-steal-time,-kvmclock-stable-bit,"
           "-kvm-pv-ipi,-kvm-pv-sched-yield,-kvm-pv-tlb-flush")
    command = [
        args.qemu, "-enable-kvm", "-cpu", cpu,
        "-m", str(args.mem), "-smp", str(args.smp),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-serial", "stdio", "-no-reboot",
        "-kernel", os.path.join(args.out, "vmlinux"),
        "-initrd", os.path.join(args.out, "initramfs.cpio"),
        "-append", cmdline,
    ]
    if args.machine == "pc":
        # SeaBIOS: its MP table lists only the CPUs it woke itself, which on
        # an emulating host is just the first one.
        return command + ["-machine", "pc,hpet=off"]
    # microvm: no PCI, no ACPI, an MP table from qboot, virtio-mmio devices
    # that QEMU adds to the kernel command line: what Hiber offers too.
    disk = os.path.join(args.out, "data.ext4")
    return command + [
        "-machine", "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,"
        "isa-serial=on,acpi=off,pcie=off",
        "-drive", f"id=data,file={disk},format=raw,if=none,snapshot=on",
        "-device", "virtio-blk-device,drive=data",
        "-device", "virtio-rng-device",
    ]


def run_command(con, ident, command, timeout):
    """Sends one agent request; returns (output lines, status, seconds)."""
    begin = f"hiber-agent: begin {ident}"
    done = f"hiber-agent: done {ident} "
    sent = con.elapsed()
    con.send(f"run {ident} {command}")
    con.expect(lambda l: l == begin, timeout, f"'{begin}'")
    first = len(con.lines)
    line, at = con.expect(lambda l: l.startswith(done), timeout, f"'{done}<status>'")
    output = con.lines[first:-1]
    return output, int(line[len(done):]), at - sent


def drive(con, args, times):
    _, times["ready"] = con.expect(
        lambda l: l == "hiber-guest: ready", args.timeout, "readiness line")
    con.expect(lambda l: l == "hiber-agent: listening", 60, "agent")

    output, status, secs = run_command(con, 1, "echo hi", 120)
    if status != 0 or "hi" not in output:
        raise RuntimeError(f"'echo hi' gave status {status}, output {output}")
    times["echo hi round trip"] = secs

    output, status, _ = run_command(con, "cpus", "nproc", 120)
    if status != 0 or output != [str(args.smp)]:
        raise RuntimeError(f"nproc gave status {status}, output {output}; want {args.smp}")

    if args.machine == "microvm":
        output, status, secs = run_command(
            con, "disk", "mount -t ext4 /dev/vda /mnt && cat /mnt/hello.txt", 120)
        if status != 0 or "hiber-data: ok" not in output:
            raise RuntimeError(f"the data disk gave status {status}, output {output}")
        times["mount and read the ext4 disk"] = secs

    output, status, secs = run_command(con, 2, "hiber-workload 1 3", 300)
    ticks = [l for l in output if l.startswith("hiber-workload: tick ")]
    if status != 0 or len(ticks) != 3 or any("checksum ok" not in t for t in ticks):
        raise RuntimeError(f"hiber-workload gave status {status}, output {output}")
    times["hiber-workload 1 MiB, 3 ticks"] = secs

    if args.stop is None:
        # microvm has no keyboard controller for reboot=k to reset, and the
        # triple-fault fallback needs an int3 the emulating host cannot run.
        times["(no stop command: microvm cannot be reset; QEMU killed)"] = con.elapsed()
        return
    con.send(f"run 3 {args.stop}")
    code = con.drain_until_exit(120)
    if code is None:
        raise RuntimeError(f"QEMU did not exit within 120 s of '{args.stop}'")
    times[f"exit after {args.stop}"] = con.elapsed()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--out", default=OUT, help="directory with vmlinux, initramfs.cpio")
    parser.add_argument("--machine", choices=["microvm", "pc"], default="microvm")
    parser.add_argument("--smp", type=int, default=1)
    parser.add_argument("--mem", type=int, default=128, help="guest RAM in MiB")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to readiness")
    parser.add_argument("--no-workarounds", action="store_true",
                        help="leave out the emulator flags (for hosts with VT-x/AMD-V)")
    parser.add_argument("--append", default="", help="extra kernel command-line words")
    parser.add_argument("--stop", help="the command that ends the guest "
                        "(default: 'reboot -f' on pc, none on microvm)")
    args = parser.parse_args()

    if args.stop is None and args.machine == "pc":
        args.stop = "reboot -f"
    words = BASE_CMDLINE + ([] if args.no_workarounds else EMULATOR_CMDLINE)
    cmdline = " ".join(words + args.append.split())
    command = qemu_command(args, cmdline)
    print("+ " + " ".join(f"'{w}'" if " " in w else w for w in command), flush=True)

    start = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    con = Console(proc, start, sys.stdout)
    times = {}
    try:
        drive(con, args, times)
    except (TimeoutError, EOFError, RuntimeError) as err:
        print(f"boot-test: FAILED: {err}", flush=True)
        return 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"boot-test: passed ({args.machine}, -smp {args.smp}, -m {args.mem})")
    for what, secs in times.items():
        print(f"  {what}: {secs:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
