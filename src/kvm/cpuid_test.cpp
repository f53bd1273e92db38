#include "kvm/cpuid.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

namespace passvm {
namespace {

kvm_cpuid_entry2 entry(uint32_t fn, uint32_t index, uint32_t eax, uint32_t ebx, uint32_t ecx, uint32_t edx,
                       bool indexed = false) {
  kvm_cpuid_entry2 e{};
  e.function = fn;
  e.index = index;
  e.flags = indexed ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0;
  e.eax = eax, e.ebx = ebx, e.ecx = ecx, e.edx = edx;
  return e;
}

// Host-like values: APIC id 0x17, 16 logical processors, 8 threads per core at the SMT level.
std::vector<kvm_cpuid_entry2> host_like() {
  return {
      entry(1, 0, 0x000806ec, 0x17100800, 0x7ffafbbf, 0xbfebfbff),
      entry(4, 0, 0x1c004121, 0, 0, 0, true),  // L1d
      entry(4, 3, 0x3c07c163, 0, 0, 0, true),  // L3, shared by 32
      entry(0xb, 0, 1, 2, 0x100, 0x17, true),
      entry(0xb, 1, 4, 16, 0x201, 0x17, true),
      entry(0xb, 2, 0, 0, 2, 0x17, true),
      entry(0x80000008, 0, 0x3030, 0, 0x700f, 0),
      entry(0x8000001e, 0, 0x17, 0x0107, 0x0101, 0),
  };
}

TEST(Cpuid, PatchesApicIdAndCountsPerVcpu) {
  auto e = host_like();
  patch_cpuid(e, 2, 3);
  auto* l1 = find_cpuid(e, 1);
  ASSERT_NE(l1, nullptr);
  EXPECT_EQ(l1->ebx >> 24, 2u);
  EXPECT_EQ((l1->ebx >> 16) & 0xff, 4u);     // 3 vCPUs need 2 id bits
  EXPECT_EQ(l1->ebx & 0xffff, 0x0800u);      // CLFLUSH size and brand kept
  EXPECT_TRUE(l1->ecx & (1u << 31));         // hypervisor
  EXPECT_TRUE(l1->edx & (1u << 28));         // HTT: more than one logical processor
  auto* smt = find_cpuid(e, 0xb, 0);
  auto* core = find_cpuid(e, 0xb, 1);
  auto* end = find_cpuid(e, 0xb, 2);
  ASSERT_TRUE(smt && core && end);
  EXPECT_EQ(smt->ebx, 1u);
  EXPECT_EQ(smt->eax, 0u);
  EXPECT_EQ(core->ebx, 3u);
  EXPECT_EQ(core->eax, 2u);
  EXPECT_EQ(core->ecx, 0x201u);
  EXPECT_EQ(end->ecx >> 8 & 0xff, 0u);
  for (auto* x : {smt, core, end}) EXPECT_EQ(x->edx, 2u);
  auto* l1d = find_cpuid(e, 4, 0);
  auto* l3 = find_cpuid(e, 4, 3);
  EXPECT_EQ(l1d->eax >> 26, 2u);
  EXPECT_EQ((l1d->eax >> 14) & 0xfff, 0u);
  EXPECT_EQ((l3->eax >> 14) & 0xfff, 2u);
  EXPECT_EQ(l3->eax & 0x3fff, 0x0163u);  // cache type and level kept
  auto* amd = find_cpuid(e, 0x80000008);
  EXPECT_EQ(amd->ecx & 0xff, 2u);
  EXPECT_EQ((amd->ecx >> 12) & 0xf, 2u);
  auto* ext = find_cpuid(e, 0x8000001e);
  EXPECT_EQ(ext->eax, 2u);
}

// A 52-bit CPU whose KVM maps only 48 bits (no 5-level EPT): the guest is told 48, so it never places
// anything where an access would not map; a KVM that says nothing there leaves the width alone.
TEST(Cpuid, AddressWidthIsWhatKvmCanMap) {
  auto e = host_like();
  find_cpuid(e, 0x80000008)->eax = 0x303034;  // 52 physical, 48 virtual, GuestPhysBits 48
  patch_cpuid(e, 0, 2);
  EXPECT_EQ(find_cpuid(e, 0x80000008)->eax & 0xffff, 0x3030u);
  auto plain = host_like();
  patch_cpuid(plain, 0, 2);
  EXPECT_EQ(find_cpuid(plain, 0x80000008)->eax, 0x3030u);
}

// AMD's cache leaf: a 32-vCPU guest on a Zen host whose L3 is shared by 16 threads must see one L3 for all
// 32 (Linux makes its last-level-cache domains from this), and its L1 and L2 per vCPU.
TEST(Cpuid, AmdCacheLeafSharesTheLastLevelAcrossAllVcpus) {
  auto e = host_like();
  e.push_back(entry(0x8000001d, 0, 0x00004121, 0x01c0003f, 0x3f, 0, true));  // L1d, 2 threads
  e.push_back(entry(0x8000001d, 2, 0x00004143, 0x01c0003f, 0x3ff, 2, true));  // L2, 2 threads
  e.push_back(entry(0x8000001d, 3, 0x0003c163, 0x03c0003f, 0x7fff, 1, true));  // L3, 16 threads
  e.push_back(entry(0x8000001d, 4, 0, 0, 0, 0, true));                        // the end
  patch_cpuid(e, 5, 32);
  EXPECT_EQ((find_cpuid(e, 0x8000001d, 0)->eax >> 14) & 0xfff, 0u);
  EXPECT_EQ((find_cpuid(e, 0x8000001d, 2)->eax >> 14) & 0xfff, 0u);
  EXPECT_EQ((find_cpuid(e, 0x8000001d, 3)->eax >> 14) & 0xfff, 31u);
  EXPECT_EQ(find_cpuid(e, 0x8000001d, 3)->eax & 0x3fff, 0x0163u);  // type and level kept
  EXPECT_EQ(find_cpuid(e, 0x8000001d, 4)->eax, 0u);
}

TEST(Cpuid, SingleVcpuHasNoHtt) {
  auto e = host_like();
  patch_cpuid(e, 0, 1);
  auto* l1 = find_cpuid(e, 1);
  EXPECT_FALSE(l1->edx & (1u << 28));
  EXPECT_EQ(l1->ebx >> 24, 0u);
  EXPECT_EQ(find_cpuid(e, 0xb, 1)->ebx, 1u);
}

TEST(Cpuid, HidingVirtualizationClearsVmxAndSvmOnly) {
  std::vector<kvm_cpuid_entry2> entries(2);
  entries[0].function = 1;
  entries[0].ecx = 0xffffffff;
  entries[1].function = 0x80000001;
  entries[1].ecx = 0xffffffff;
  entries[1].edx = 0x12345678;
  hide_virtualization(entries);
  EXPECT_EQ(entries[0].ecx, ~(1u << 5));
  EXPECT_EQ(entries[1].ecx, ~(1u << 2));
  EXPECT_EQ(entries[1].edx, 0x12345678u);
  std::vector<kvm_cpuid_entry2> none;
  hide_virtualization(none);  // leaves that are absent stay absent
  EXPECT_TRUE(none.empty());
}

TEST(Cpuid, BufferRoundTrip) {
  auto e = host_like();
  auto back = cpuid_entries(cpuid_buffer(e));
  ASSERT_EQ(back.size(), e.size());
  EXPECT_EQ(back[4].function, 0xbu);
  EXPECT_EQ(back[4].index, 1u);
  EXPECT_EQ(back[4].ebx, 16u);
}

std::array<uint32_t, 12> brand_of(const std::string& name) {
  std::array<uint32_t, 12> regs{};
  std::memcpy(regs.data(), name.data(), std::min<size_t>(name.size(), 48));
  return regs;
}

std::string name_in(std::vector<kvm_cpuid_entry2>& e) {
  std::array<uint32_t, 12> regs{};
  for (uint32_t i = 0; i < 3; i++) {
    auto* l = find_cpuid(e, 0x80000002 + i);
    if (!l) return "(missing)";
    regs[i * 4] = l->eax, regs[i * 4 + 1] = l->ebx, regs[i * 4 + 2] = l->ecx, regs[i * 4 + 3] = l->edx;
  }
  return std::string(reinterpret_cast<const char*>(regs.data()), strnlen(reinterpret_cast<const char*>(regs.data()), 48));
}

TEST(Cpuid, BrandStringFillsTheZeroLeavesKvmGives) {
  auto e = host_like();
  e.push_back(entry(0x80000000, 0, 0x80000008, 0, 0, 0));
  for (uint32_t fn = 0x80000002; fn <= 0x80000004; fn++) e.push_back(entry(fn, 0, 0, 0, 0, 0));
  set_brand_string(e, brand_of("AMD EPYC 7B13 64-Core Processor"));
  EXPECT_EQ(name_in(e), "AMD EPYC 7B13 64-Core Processor");
}

TEST(Cpuid, BrandStringAddsMissingLeavesOnlyWhereTheGuestLooks) {
  auto e = host_like();
  e.push_back(entry(0x80000000, 0, 0x80000008, 0, 0, 0));
  set_brand_string(e, brand_of("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"));
  EXPECT_EQ(name_in(e), "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz");

  auto low = host_like();
  low.push_back(entry(0x80000000, 0, 0x80000001, 0, 0, 0));  // the guest never reads 0x80000002
  set_brand_string(low, brand_of("anything"));
  EXPECT_EQ(find_cpuid(low, 0x80000002), nullptr);
  auto none = host_like();  // no extended range at all
  set_brand_string(none, brand_of("anything"));
  EXPECT_EQ(none.size(), host_like().size());
}

TEST(Cpuid, BrandStringKeepsANameKvmGave) {
  auto e = host_like();
  e.push_back(entry(0x80000000, 0, 0x80000008, 0, 0, 0));
  auto kvm = brand_of("Given by KVM");
  for (uint32_t i = 0; i < 3; i++) e.push_back(entry(0x80000002 + i, 0, kvm[i * 4], kvm[i * 4 + 1], kvm[i * 4 + 2], kvm[i * 4 + 3]));
  set_brand_string(e, brand_of("From the host"));
  EXPECT_EQ(name_in(e), "Given by KVM");
}

TEST(Cpuid, HostBrandStringIsText) {
  // Not compared with /proc/cpuinfo: under some hypervisors Linux's "model name" differs from what CPUID
  // says now (this machine: "AMD EPYC" there, "Oxide Virtual Turin-like Processor" from CPUID).
  auto regs = host_brand_string();
  const char* s = reinterpret_cast<const char*>(regs.data());
  size_t n = strnlen(s, 48);
  if (n == 0) GTEST_SKIP() << "this CPU has no processor name in CPUID";
  for (size_t i = 0; i < n; i++) EXPECT_TRUE(s[i] >= 0x20 && s[i] < 0x7f) << "byte " << i;
}

}  // namespace
}  // namespace passvm
