#include "kvm/cpuid.h"

#include "kvm/uapi.h"

#include <cpuid.h>

#include <string>

#include <algorithm>
#include <cstring>

namespace passvm {

std::vector<kvm_cpuid_entry2> cpuid_entries(const std::vector<uint8_t>& cpuid2) {
  kvm_uapi::Cpuid2Header header{};
  std::memcpy(&header, cpuid2.data(), sizeof header);
  std::vector<kvm_cpuid_entry2> out(header.nent);
  std::memcpy(out.data(), cpuid2.data() + sizeof header, header.nent * sizeof(kvm_cpuid_entry2));
  return out;
}

std::vector<uint8_t> cpuid_buffer(const std::vector<kvm_cpuid_entry2>& entries) {
  std::vector<uint8_t> buf(sizeof(kvm_uapi::Cpuid2Header) + entries.size() * sizeof(kvm_cpuid_entry2));
  kvm_uapi::Cpuid2Header header{};
  header.nent = static_cast<uint32_t>(entries.size());
  std::memcpy(buf.data(), &header, sizeof header);
  std::memcpy(buf.data() + sizeof header, entries.data(), entries.size() * sizeof(kvm_cpuid_entry2));
  return buf;
}

kvm_cpuid_entry2* find_cpuid(std::vector<kvm_cpuid_entry2>& entries, uint32_t function, uint32_t index) {
  for (auto& e : entries) {
    bool indexed = e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    if (e.function == function && (!indexed || e.index == index)) return &e;
  }
  return nullptr;
}

namespace {

// Bits needed to number n things: 1 -> 0, 2 -> 1, 3..4 -> 2, ...
uint32_t id_bits(uint32_t n) {
  uint32_t bits = 0;
  while ((1u << bits) < n) bits++;
  return bits;
}

constexpr uint32_t kLeaf1EcxHypervisor = 1u << 31;
constexpr uint32_t kLeaf1EdxHtt = 1u << 28;

}  // namespace

void patch_cpuid(std::vector<kvm_cpuid_entry2>& entries, uint32_t apic_id, uint32_t count) {
  const uint32_t core_bits = id_bits(count);
  for (auto& e : entries) {
    switch (e.function) {
      case 1:
        // EBX[31:24] initial APIC id, EBX[23:16] addressable logical processors per package.
        e.ebx = (e.ebx & 0x0000ffff) | (apic_id << 24) | (std::min<uint32_t>(1u << core_bits, 255) << 16);
        e.ecx |= kLeaf1EcxHypervisor;
        if (count > 1)
          e.edx |= kLeaf1EdxHtt;
        else
          e.edx &= ~kLeaf1EdxHtt;
        break;
      case 4: {
        // Deterministic cache parameters: EAX[31:26] cores per package - 1, EAX[25:14] sharing threads - 1.
        // L1 and L2 are per core; the last level is shared by the whole package.
        if ((e.eax & 0x1f) == 0) break;  // no more caches
        uint32_t level = (e.eax >> 5) & 0x7;
        uint32_t sharing = level >= 3 ? count - 1 : 0;
        e.eax = (e.eax & 0x3fff) | ((std::min<uint32_t>(count, 64) - 1) << 26) | ((sharing & 0xfff) << 14);
        break;
      }
      case 0x8000001d: {
        // AMD's cache topology, leaf 4's layout: EAX[25:14] threads sharing the cache - 1, from which Linux
        // derives its last-level-cache domains. The host's counts would split the vCPUs into several.
        if ((e.eax & 0x1f) == 0) break;
        uint32_t level = (e.eax >> 5) & 0x7;
        uint32_t sharing = level >= 3 ? count - 1 : 0;
        e.eax = (e.eax & ~(0xfffu << 14)) | ((sharing & 0xfff) << 14);
        break;
      }
      case 0xb:
      case 0x1f: {
        // Extended topology: subleaf 0 is the SMT level (one thread per core), subleaf 1 the core level.
        // EDX is the x2APIC id at every subleaf.
        e.edx = apic_id;
        if (e.index == 0) {
          e.eax = 0;
          e.ebx = 1;
          e.ecx = (1u << 8) | 0;
        } else if (e.index == 1) {
          e.eax = core_bits;
          e.ebx = count;
          e.ecx = (2u << 8) | 1;
        } else {
          e.eax = 0;
          e.ebx = 0;
          e.ecx = e.index;  // level type 0: invalid, ends the enumeration
        }
        break;
      }
      case 0x80000008: {
        // AMD: ECX[7:0] cores per package - 1, ECX[15:12] APIC id bits used for the core.
        e.ecx = (e.ecx & ~0xf0ffu) | ((count - 1) & 0xff) | (core_bits << 12);
        // The guest's address width is what KVM can map (EAX[23:16] when KVM says it is less), so the guest
        // never places a BAR or RAM where no access would reach.
        uint32_t reachable = (e.eax >> 16) & 0xff;
        if (reachable && reachable < (e.eax & 0xff)) e.eax = (e.eax & ~0xffu) | reachable;
        break;
      }
      case 0x8000001e:
        // AMD: EAX extended APIC id, EBX[7:0] core (compute unit) id with one thread, ECX node 0.
        e.eax = apic_id;
        e.ebx = apic_id & 0xff;
        e.ecx = 0;
        break;
      default:
        break;
    }
  }
}

void set_brand_string(std::vector<kvm_cpuid_entry2>& entries, const std::array<uint32_t, 12>& brand) {
  const kvm_cpuid_entry2* ext = find_cpuid(entries, 0x80000000);
  if (!ext || ext->eax < 0x80000004) return;
  bool named = false;
  for (uint32_t fn = 0x80000002; fn <= 0x80000004; fn++)
    if (const kvm_cpuid_entry2* e = find_cpuid(entries, fn); e && (e->eax | e->ebx | e->ecx | e->edx) != 0) named = true;
  if (named) return;
  for (uint32_t i = 0; i < 3; i++) {
    const uint32_t fn = 0x80000002 + i;
    kvm_cpuid_entry2* e = find_cpuid(entries, fn);
    if (!e) {
      entries.push_back(kvm_cpuid_entry2{});
      e = &entries.back();
      e->function = fn;
    }
    e->eax = brand[i * 4];
    e->ebx = brand[i * 4 + 1];
    e->ecx = brand[i * 4 + 2];
    e->edx = brand[i * 4 + 3];
  }
}

std::array<uint32_t, 12> host_brand_string() {
  std::array<uint32_t, 12> out{};
  const unsigned max_extended_leaf = __get_cpuid_max(0x80000000, nullptr);  // int under clang, unsigned under GCC
  if (max_extended_leaf < 0x80000004) return out;
  for (uint32_t i = 0; i < 3; i++) __cpuid(0x80000002 + i, out[i * 4], out[i * 4 + 1], out[i * 4 + 2], out[i * 4 + 3]);
  return out;
}

bool host_has_ht_hole() {
  uint32_t max_leaf = 0, vendor[3] = {};
  __cpuid(0, max_leaf, vendor[0], vendor[2], vendor[1]);  // EBX, EDX, ECX spell the vendor
  const std::string name(reinterpret_cast<const char*>(vendor), sizeof vendor);
  return name == "AuthenticAMD" || name == "HygonGenuine";
}

void hide_virtualization(std::vector<kvm_cpuid_entry2>& entries) {
  if (auto* leaf1 = find_cpuid(entries, 1)) leaf1->ecx &= ~(1u << 5);
  if (auto* ext1 = find_cpuid(entries, 0x80000001)) ext1->ecx &= ~(1u << 2);
}

}  // namespace passvm
