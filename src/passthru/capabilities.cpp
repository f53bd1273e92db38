#include "passthru/capabilities.h"

#include "pci/pci_device.h"

#include <algorithm>
#include <set>

namespace passvm::passthru {
namespace {

// Standard capabilities are the guest's to use (vfio-pci virtualizes the sensitive ones, VPD and AF
// included) except enhanced allocation, which describes resources passvm does not place.
bool keep_standard(uint16_t id, bool hide_msix) {
  return id != kCapEnhancedAllocation && !(hide_msix && id == kCapMsix);
}

bool keep_extended(uint16_t id) {
  switch (id) {
    case kExtSriov: case kExtMriov: case kExtResizableBar: case kExtVfResizableBar:
    case kExtAts: case kExtPri: case kExtPasid: case kExtMulticast: case kExtAri:
      return false;
    default:
      return true;
  }
}

void override_dword(CapabilityPlan& plan, uint32_t off, uint32_t v) {
  for (uint32_t i = 0; i < 4; i++) plan.overrides.push_back({off + i, static_cast<uint8_t>(v >> (8 * i))});
}

// Bytes a hidden capability occupies, header included, where its layout says; otherwise its header
// alone. Never more: the gaps between capabilities may hold vendor registers a driver uses (the kernel
// passes them through on purpose), so they stay the device's.
uint32_t hidden_length(std::span<const uint8_t> c, const Capability& cap) {
  if (!cap.extended) return cap.id == kCapMsix ? 12 : 2;
  switch (cap.id) {
    case kExtSriov: return 0x40;
    case kExtAts: case kExtPasid: case kExtAri: return 8;
    case kExtPri: return 0x10;
    case kExtMulticast: return 0x30;
    case kExtResizableBar: case kExtVfResizableBar: {
      // One 8-byte entry per resizable BAR; the count is in the first entry's control register.
      uint32_t ctrl = cap.offset + 8 + 4 <= c.size() ? pci::load_le(c.data() + cap.offset + 8, 4) : 0;
      uint32_t n = (ctrl >> 5) & 7;
      return 4 + 8 * std::clamp<uint32_t>(n, 1, 6);
    }
    default: return 4;
  }
}

void hide(std::span<const uint8_t> c, CapabilityPlan& plan, const Capability& cap, uint32_t from) {
  uint32_t end = std::min<uint32_t>(cap.offset + hidden_length(c, cap), cap.extended ? 0x1000 : 0x100);
  if (end > from) plan.hidden.push_back({from, end - from});
}

void walk_standard(std::span<const uint8_t> c, CapabilityPlan& plan, bool hide_msix) {
  if (c.size() < 0x100 || !(c[0x06] & 0x10)) return;  // status: capability list present
  std::set<uint32_t> seen;
  for (uint32_t off = c[0x34] & 0xfcu; off >= 0x40 && off < 0x100 && seen.insert(off).second;
       off = c[off + 1] & 0xfcu) {
    uint16_t id = c[off];
    bool hide = !keep_standard(id, hide_msix);
    plan.found.push_back({off, id, false, hide});
    if (hide) continue;
    if (id == kCapMsi && !plan.msi) plan.msi = off;
    if (id == kCapMsix && !plan.msix) plan.msix = off;
    if (id == kCapPcie && !plan.pcie) plan.pcie = off;
    if (id == kCapPm && !plan.pm) plan.pm = off;
    if (id == kCapAdvancedFeatures && !plan.af) plan.af = off;
  }
  // Relink: the pointer at 0x34, then each kept capability's next byte, point at the next kept one.
  uint32_t link = 0x34;
  for (auto& cap : plan.found) {
    if (cap.hidden) continue;
    plan.overrides.push_back({link, static_cast<uint8_t>(cap.offset)});
    link = cap.offset + 1;
  }
  plan.overrides.push_back({link, 0});
  // A hidden capability's own bytes read as zero, so a guest walking by offset finds nothing there.
  for (auto& cap : plan.found)
    if (cap.hidden) hide(c, plan, cap, cap.offset);
}

void walk_extended(std::span<const uint8_t> c, CapabilityPlan& plan) {
  if (c.size() < 0x1000) return;
  size_t first = plan.found.size();
  std::set<uint32_t> seen;
  for (uint32_t off = 0x100; off >= 0x100 && off + 4 <= 0x1000 && seen.insert(off).second;) {
    uint32_t h = pci::load_le(c.data() + off, 4);
    if (h == 0 || h == 0xffffffff) break;
    uint16_t id = static_cast<uint16_t>(h & 0xffff);
    plan.found.push_back({off, id, true, !keep_extended(id)});
    off = (h >> 20) & 0xffc;
  }
  std::vector<Capability> ext(plan.found.begin() + static_cast<std::ptrdiff_t>(first), plan.found.end());
  if (ext.empty()) return;
  // Each kept header gets the offset of the next kept one.
  std::vector<const Capability*> kept;
  for (auto& cap : ext)
    if (!cap.hidden) kept.push_back(&cap);
  for (size_t i = 0; i < kept.size(); i++) {
    uint32_t next = i + 1 < kept.size() ? kept[i + 1]->offset : 0;
    uint32_t h = pci::load_le(c.data() + kept[i]->offset, 4);
    override_dword(plan, kept[i]->offset, (h & 0xfffff) | next << 20);
  }
  for (auto& cap : ext) {
    if (!cap.hidden) continue;
    if (cap.offset == 0x100) {
      // The list must start at 0x100: a null capability there that points past itself.
      uint32_t next = 0;
      for (auto* k : kept)
        if (k->offset != 0x100) {
          next = k->offset;
          break;
        }
      override_dword(plan, 0x100, next << 20);
      hide(c, plan, cap, 0x104);
    } else {
      hide(c, plan, cap, cap.offset);
    }
  }
}

}  // namespace

CapabilityPlan plan_capabilities(std::span<const uint8_t> config, bool hide_msix) {
  CapabilityPlan plan;
  walk_standard(config, plan, hide_msix);
  walk_extended(config, plan);
  return plan;
}

}  // namespace passvm::passthru
