//! Model-specific registers: the values a vCPU starts with, and the list of
//! MSRs a snapshot must carry.
//!
//! kvm-bindings does not carry Linux's `msr-index.h`, so the few indices
//! used here are spelled out.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// IA32_MISC_ENABLE bit 0: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled (bit 11), default memory type write-back (6).
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// Errors of reading or writing MSRs.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// KVM did not list its MSRs.
    #[error("KVM did not report its list of saveable MSRs")]
    IndexList(#[source] kvm_ioctls::Error),
    /// An MSR array could not be built.
    #[error("could not build an array of {0} MSR entries")]
    Array(usize),
    /// Reading or writing MSRs failed.
    #[error("the KVM call {0} failed")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    /// KVM accepted only part of the MSRs.
    #[error("KVM accepted only {done} of {total} MSRs; the first refused is {index:#x}")]
    Partial {
        /// How many entries KVM processed.
        done: usize,
        /// How many were given.
        total: usize,
        /// The index of the first refused MSR.
        index: u32,
    },
}

/// The MSR values a freshly booted vCPU gets, as Linux's boot protocol
/// expects them.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Builds a KVM MSR array from entries.
pub fn to_msrs(entries: &[kvm_msr_entry]) -> Result<Msrs, MsrError> {
    Msrs::from_entries(entries).map_err(|_| MsrError::Array(entries.len()))
}

/// Writes `entries` to the vCPU, failing unless KVM takes every one.
pub fn set_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), MsrError> {
    let msrs = to_msrs(entries)?;
    let done = vcpu
        .set_msrs(&msrs)
        .map_err(|e| MsrError::Ioctl("KVM_SET_MSRS", e))?;
    if done != entries.len() {
        return Err(MsrError::Partial {
            done,
            total: entries.len(),
            index: entries[done].index,
        });
    }
    Ok(())
}

/// Reads the MSRs `indices` from the vCPU.
pub fn get_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, MsrError> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = to_msrs(&entries)?;
    let done = vcpu
        .get_msrs(&mut msrs)
        .map_err(|e| MsrError::Ioctl("KVM_GET_MSRS", e))?;
    if done != indices.len() {
        return Err(MsrError::Partial {
            done,
            total: indices.len(),
            index: indices[done],
        });
    }
    Ok(msrs.as_slice().to_vec())
}

/// The MSRs KVM lists as saveable that this vCPU can actually read.
///
/// KVM_GET_MSR_INDEX_LIST names MSRs of every feature KVM knows; reading one
/// whose feature the guest's CPUID lacks fails, so each is tried and the
/// unreadable ones are dropped (and logged at debug).
pub fn saveable_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, MsrError> {
    let listed = kvm.get_msr_index_list().map_err(MsrError::IndexList)?;
    let mut readable = Vec::with_capacity(listed.as_slice().len());
    for &index in listed.as_slice() {
        match get_msrs(vcpu, &[index]) {
            Ok(_) => readable.push(index),
            Err(_) => log::debug!("MSR {index:#x} is listed by KVM but not readable: skipped"),
        }
    }
    Ok(readable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_fast_strings_and_writeback_mtrrs() {
        let msrs = boot_msrs();
        let misc = msrs
            .iter()
            .find(|m| m.index == MSR_IA32_MISC_ENABLE)
            .unwrap();
        assert_eq!(misc.data & MISC_ENABLE_FAST_STRING, 1);
        let mtrr = msrs.iter().find(|m| m.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(mtrr.data, 0x806);
        assert!(msrs.iter().any(|m| m.index == MSR_LSTAR));
    }
}
