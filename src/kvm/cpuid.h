// kvm/cpuid.h: the CPUID a vCPU shows the guest.
//
// KVM_GET_SUPPORTED_CPUID describes what the host CPU and KVM can offer, but
// its topology fields describe the host. Each vCPU needs its own APIC id in
// the leaves the guest reads it from (1, 0xB, 0x1F, 0x8000001E), and the
// processor counts must agree with the number of vCPUs, or Linux builds a
// wrong topology (or sees fewer CPUs than the ACPI MADT lists).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <linux/kvm.h>

namespace passvm {

// The entries of a kvm_cpuid2 buffer (as Kvm::supported_cpuid returns) and back.
std::vector<kvm_cpuid_entry2> cpuid_entries(const std::vector<uint8_t>& cpuid2);
std::vector<uint8_t> cpuid_buffer(const std::vector<kvm_cpuid_entry2>& entries);

// Rewrites the entries for vCPU apic_id of a machine of count vCPUs, all cores of one socket with one
// thread each; sets the hypervisor bit. Leaves absent from entries stay absent.
void patch_cpuid(std::vector<kvm_cpuid_entry2>& entries, uint32_t apic_id, uint32_t count);

// The processor's name (leaves 0x80000002-0x80000004, 48 bytes as twelve registers), which
// KVM_GET_SUPPORTED_CPUID leaves zero: the guest would name its CPU after the family alone ("AMD
// Hammer"). Fills those leaves, adding any that are missing, when entries reach them (0x80000000's EAX is
// 0x80000004 or more) and they are zero; a name KVM gave is kept.
void set_brand_string(std::vector<kvm_cpuid_entry2>& entries, const std::array<uint32_t, 12>& brand);
// This host CPU's name, as the CPUID instruction gives it; all zero where the CPU has none.
std::array<uint32_t, 12> host_brand_string();
// Whether this host is AMD's or Hygon's, whose IOMMU reserves the HyperTransport range below 1 TiB.
bool host_has_ht_hole();

// Hides hardware virtualization from the guest: VMX (leaf 1 ECX bit 5) and SVM (0x80000001 ECX bit 2).
// KVM then refuses the guest's CR4.VMXE and EFER.SVME, so no nested guest can run in it.
void hide_virtualization(std::vector<kvm_cpuid_entry2>& entries);

// The entry for (function, index), or nullptr.
kvm_cpuid_entry2* find_cpuid(std::vector<kvm_cpuid_entry2>& entries, uint32_t function, uint32_t index = 0);

}  // namespace passvm
