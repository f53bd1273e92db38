#include "kvm/exit_sites.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <tuple>

namespace passvm {

namespace {

// Bit 63 marks a used slot (so address 0 has a key), bit 62 MMIO, bit 61 a write; guest-physical
// addresses and ports fit below.
constexpr uint64_t kUsed = 1ull << 63, kMmio = 1ull << 62, kWrite = 1ull << 61, kAddrMask = kWrite - 1;

uint64_t encode(bool mmio, bool write, uint64_t addr) {
  return kUsed | (mmio ? kMmio : 0) | (write ? kWrite : 0) | (addr & kAddrMask);
}

}  // namespace

std::string ExitSite::text() const {
  return fmt::format("{} {:#x} {}", mmio ? "mmio" : "port", addr, write ? "write" : "read");
}

void ExitSites::add(bool mmio, bool write, uint64_t addr) {
  const uint64_t key = encode(mmio, write, addr);
  // Open addressing with linear probing; only this thread inserts, so a free slot found stays ours.
  size_t i = static_cast<size_t>((key * 0x9e3779b97f4a7c15ull) >> 56) % kSlots;
  for (size_t probe = 0; probe < kSlots; probe++, i = (i + 1) % kSlots) {
    uint64_t k = slots_[i].key.load(std::memory_order_relaxed);
    if (k == key) {
      slots_[i].count.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (k == 0) {
      slots_[i].count.store(1, std::memory_order_relaxed);
      slots_[i].key.store(key, std::memory_order_release);
      return;
    }
  }
  overflow_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<ExitSite> ExitSites::sites() const {
  std::vector<ExitSite> out;
  for (const auto& s : slots_) {
    uint64_t k = s.key.load(std::memory_order_acquire);
    if (k == 0) continue;
    out.push_back({(k & kMmio) != 0, (k & kWrite) != 0, k & kAddrMask, s.count.load(std::memory_order_relaxed)});
  }
  return out;
}

std::vector<ExitSite> ExitSites::busiest(const std::vector<std::vector<ExitSite>>& per_vcpu, size_t n) {
  std::map<std::tuple<bool, bool, uint64_t>, uint64_t> sum;
  for (const auto& v : per_vcpu)
    for (const auto& s : v) sum[{s.mmio, s.write, s.addr}] += s.count;
  std::vector<ExitSite> out;
  for (const auto& [k, c] : sum) out.push_back({std::get<0>(k), std::get<1>(k), std::get<2>(k), c});
  std::stable_sort(out.begin(), out.end(), [](const ExitSite& a, const ExitSite& b) { return a.count > b.count; });
  if (n != 0 && out.size() > n) out.resize(n);
  return out;
}

}  // namespace passvm
