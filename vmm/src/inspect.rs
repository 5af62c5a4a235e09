//! `hiber inspect`: what a snapshot holds, for people and for scripts.
//!
//! Works offline: it needs neither KVM nor the machine the snapshot came
//! from. The state file is fully checked (magic, version, checksum) before
//! anything is shown.

use std::fmt::Write as _;
use std::path::Path;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use serde_json::{json, Value};

use crate::persist::{PersistError, SavedMachine};
use crate::vstate::vcpu::VcpuState;

/// Prints the snapshot at `state` (and facts about `mem`, if given).
pub fn run(state: &Path, mem: Option<&Path>, as_json: bool) -> Result<(), PersistError> {
    let file = snapshot::StateFile::read(state)?;
    let saved = SavedMachine::read(state)?;
    let report = report(state, &file, &saved, mem)?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// The whole report as JSON; the text form is rendered from it.
pub fn report(
    path: &Path,
    file: &snapshot::StateFile,
    saved: &SavedMachine,
    mem: Option<&Path>,
) -> Result<Value, PersistError> {
    let sections: Vec<Value> = file
        .sections()
        .iter()
        .map(|s| json!({"name": s.name(), "offset": s.offset(), "length": s.payload().len()}))
        .collect();
    let mem_file = match mem {
        Some(p) => json!({
            "path": p,
            "apparent_bytes": snapshot::apparent_size(p)?,
            "allocated_bytes": snapshot::allocated_size(p)?,
        }),
        None => Value::Null,
    };
    Ok(json!({
        "path": path,
        "format_version": file.format_version(),
        "snapshot_id": snapshot::format_snapshot_id(&saved.meta.snapshot_id),
        "vmm_version": saved.meta.vmm_version,
        "created_unix": saved.meta.created_unix,
        "sections": sections,
        "host": serde_json::to_value(&saved.meta.host).unwrap_or_default(),
        "quirks": serde_json::to_value(&saved.meta.quirks).unwrap_or_default(),
        "config": serde_json::to_value(&saved.config).unwrap_or_default(),
        "vcpus": saved.vcpus.iter().map(vcpu_json).collect::<Vec<_>>(),
        "vm": vm_json(&saved.vm),
        "devices": serde_json::to_value(&saved.devices).unwrap_or_default(),
        "virtio": saved.virtio.iter().map(virtio_json).collect::<Vec<_>>(),
        "memory": {
            "file_size": saved.memory.file_size,
            "regions": serde_json::to_value(&saved.memory.regions).unwrap_or_default(),
            "file": mem_file,
        },
    }))
}

fn virtio_json(d: &crate::virtio::VirtioDeviceState) -> Value {
    let t = &d.transport;
    let queues: Vec<Value> = t
        .queues
        .iter()
        .map(|q| {
            json!({"size": q.size, "ready": q.ready, "next_avail": q.next_avail,
                   "next_used": q.next_used, "desc_table": q.desc_table})
        })
        .collect();
    let (kind, device) = match serde_json::to_value(&d.device).unwrap_or_default() {
        Value::Object(m) => m.into_iter().next().unwrap_or((String::new(), Value::Null)),
        other => (String::new(), other),
    };
    json!({
        "type": kind,
        "window": d.window,
        "mmio_addr": crate::boot::layout::virtio_mmio_addr(d.window).map(|a| a.0),
        "irq": d.irq,
        "status": t.status,
        "activated": t.activated,
        "acked_features": t.acked_features,
        "interrupt_status": t.interrupt_status,
        "queues": queues,
        "device": device,
    })
}

fn render_virtio(out: &mut String, v: &Value) {
    let _ = writeln!(
        out,
        "virtio {} at {:#x}, line {}: status {:#x}{}, features {:#x}, interrupt status {}",
        v["type"].as_str().unwrap_or("?"),
        v["mmio_addr"].as_u64().unwrap_or(0),
        v["irq"],
        v["status"].as_u64().unwrap_or(0),
        if v["activated"].as_bool() == Some(true) {
            " (active)"
        } else {
            ""
        },
        v["acked_features"].as_u64().unwrap_or(0),
        v["interrupt_status"]
    );
    for (i, q) in v["queues"].as_array().into_iter().flatten().enumerate() {
        let _ = writeln!(
            out,
            "  queue {i}: size {}, ready {}, next avail {}, next used {}",
            q["size"], q["ready"], q["next_avail"], q["next_used"]
        );
    }
    let _ = writeln!(out, "  state {}", v["device"]);
}

fn vm_json(vm: &crate::vstate::vm::VmState) -> Value {
    let channels: Vec<Value> = vm
        .pit
        .channels
        .iter()
        .map(|c| json!({"count": c.count, "mode": c.mode, "gate": c.gate}))
        .collect();
    json!({ "kvmclock_ns": vm.clock.clock, "pit_channels": channels })
}

fn segment_json(s: &kvm_segment) -> Value {
    json!({"selector": s.selector, "base": s.base, "limit": s.limit, "dpl": s.dpl, "l": s.l})
}

fn regs_json(r: &kvm_regs) -> Value {
    json!({
        "rax": r.rax, "rbx": r.rbx, "rcx": r.rcx, "rdx": r.rdx,
        "rsi": r.rsi, "rdi": r.rdi, "rbp": r.rbp, "rsp": r.rsp,
        "r8": r.r8, "r9": r.r9, "r10": r.r10, "r11": r.r11,
        "r12": r.r12, "r13": r.r13, "r14": r.r14, "r15": r.r15,
        "rip": r.rip, "rflags": r.rflags,
    })
}

fn sregs_json(s: &kvm_sregs) -> Value {
    json!({
        "cs": segment_json(&s.cs), "ds": segment_json(&s.ds), "es": segment_json(&s.es),
        "fs": segment_json(&s.fs), "gs": segment_json(&s.gs), "ss": segment_json(&s.ss),
        "tr": segment_json(&s.tr),
        "gdt": {"base": s.gdt.base, "limit": s.gdt.limit},
        "idt": {"base": s.idt.base, "limit": s.idt.limit},
        "cr0": s.cr0, "cr2": s.cr2, "cr3": s.cr3, "cr4": s.cr4, "cr8": s.cr8,
        "efer": s.efer, "apic_base": s.apic_base,
    })
}

fn vcpu_json(v: &VcpuState) -> Value {
    let msrs: serde_json::Map<String, Value> = v
        .msrs
        .iter()
        .map(|m| (format!("{:#x}", m.index), json!(m.data)))
        .collect();
    json!({
        "id": v.id,
        "regs": regs_json(&v.regs),
        "sregs": sregs_json(&v.sregs),
        "mp_state": v.mp_state.mp_state,
        "tsc_khz": v.tsc_khz,
        "pending": {
            "exception": v.events.exception.injected != 0 || v.events.exception.pending != 0,
            "exception_nr": v.events.exception.nr,
            "nmi": v.events.nmi.pending != 0 || v.events.nmi.injected != 0,
            "interrupt_shadow": v.events.interrupt.shadow,
        },
        "xsave_bytes": v.xsave.len(),
        "cpuid_entries": v.cpuid.len(),
        "msrs": msrs,
    })
}

fn hex(v: &Value) -> String {
    format!("{:#018x}", v.as_u64().unwrap_or(0))
}

fn render_vcpu(out: &mut String, v: &Value) {
    let r = &v["regs"];
    let _ = writeln!(
        out,
        "vCPU {} (mp_state {}, TSC {} kHz)",
        v["id"], v["mp_state"], v["tsc_khz"]
    );
    for row in [
        ["rax", "rbx", "rcx", "rdx"],
        ["rsi", "rdi", "rbp", "rsp"],
        ["r8", "r9", "r10", "r11"],
        ["r12", "r13", "r14", "r15"],
    ] {
        let cells: Vec<String> = row
            .iter()
            .map(|n| format!("{n:<3} {}", hex(&r[*n])))
            .collect();
        let _ = writeln!(out, "  {}", cells.join("  "));
    }
    let s = &v["sregs"];
    let _ = writeln!(
        out,
        "  rip {}  rflags {}",
        hex(&r["rip"]),
        hex(&r["rflags"])
    );
    let _ = writeln!(
        out,
        "  cs {:#06x} (dpl {})  ss {:#06x}  tr {:#06x}",
        s["cs"]["selector"].as_u64().unwrap_or(0),
        s["cs"]["dpl"],
        s["ss"]["selector"].as_u64().unwrap_or(0),
        s["tr"]["selector"].as_u64().unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "  cr0 {}  cr3 {}  cr4 {}  efer {}",
        hex(&s["cr0"]),
        hex(&s["cr3"]),
        hex(&s["cr4"]),
        hex(&s["efer"])
    );
    let _ = writeln!(
        out,
        "  {} MSRs, {} CPUID entries, {} bytes of XSAVE; pending {}",
        v["msrs"].as_object().map_or(0, |m| m.len()),
        v["cpuid_entries"],
        v["xsave_bytes"],
        v["pending"]
    );
}

fn mib(v: &Value) -> String {
    format!(
        "{:.1} MiB",
        v.as_u64().unwrap_or(0) as f64 / (1 << 20) as f64
    )
}

/// The text form of [`report`].
pub fn render(r: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "snapshot {}", r["path"].as_str().unwrap_or(""));
    let _ = writeln!(
        out,
        "  format version {}, written by hiber {} at unix time {}, id {}",
        r["format_version"], r["vmm_version"], r["created_unix"], r["snapshot_id"]
    );
    for s in r["sections"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  section {:<8} at {:>6}, {:>6} bytes",
            s["name"].as_str().unwrap_or(""),
            s["offset"],
            s["length"]
        );
    }
    let _ = writeln!(out, "host {}", r["host"]);
    let _ = writeln!(out, "host quirks {}", r["quirks"]);
    let _ = writeln!(out, "machine {}", r["config"]);
    for v in r["vcpus"].as_array().into_iter().flatten() {
        render_vcpu(&mut out, v);
    }
    let _ = writeln!(out, "vm {}", r["vm"]);
    let _ = writeln!(out, "devices {}", r["devices"]);
    for v in r["virtio"].as_array().into_iter().flatten() {
        render_virtio(&mut out, v);
    }
    let m = &r["memory"];
    let _ = writeln!(out, "memory file of {}", mib(&m["file_size"]));
    for region in m["regions"].as_array().into_iter().flatten() {
        let start = region["guest_addr"].as_u64().unwrap_or(0);
        let size = region["size"].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "  guest {:#012x}..{:#012x} ({}) at file offset {:#x}, xxh3 {:#018x}",
            start,
            start + size,
            mib(&region["size"]),
            region["file_offset"].as_u64().unwrap_or(0),
            region["checksum"].as_u64().unwrap_or(0)
        );
    }
    if !m["file"].is_null() {
        let _ = writeln!(
            out,
            "  {}: apparent {}, allocated {}",
            m["file"]["path"].as_str().unwrap_or(""),
            mib(&m["file"]["apparent_bytes"]),
            mib(&m["file"]["allocated_bytes"])
        );
    }
    out
}
