// passthru: the capability lists the guest is shown.
//
// The guest sees every capability a driver may need (power management, VPD,
// MSI, MSI-X, PCI Express, vendor-specific, advanced features, AER, serial
// number ...). Hidden are those that would let it reconfigure the device behind
// the host's back or that describe resources passvm does not virtualize: SR-IOV,
// MR-IOV, resizable BAR, ATS/PRI/PASID, multicast, ARI (a guest slot has no
// functions beyond 7) and enhanced allocation.
// Hidden capabilities are unlinked by rewriting next pointers, and their own
// bytes (as long as their layout says; the header alone when it says nothing)
// read as zeros and drop writes. The gaps between capabilities stay the
// device's: drivers keep vendor registers there. A hidden extended capability
// at 0x100 cannot be unlinked (the list starts there), so its header becomes a
// null capability (id 0) whose next pointer skips it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "vfio/device.h"

namespace passvm::passthru {

struct Capability {
  uint32_t offset;
  uint16_t id;
  bool extended;
  bool hidden;
};

struct CapabilityPlan {
  std::vector<Capability> found;  // in list order, standard first
  std::optional<uint32_t> msi, msix, pcie, pm, af;  // af: Advanced Features (a conventional device's FLR)
  // Bytes whose value the guest sees is overridden (capability pointers, next pointers, headers).
  std::vector<std::pair<uint32_t, uint8_t>> overrides;
  // Byte ranges that read as zero and ignore writes (bodies of hidden capabilities).
  std::vector<vfio::Area> hidden;
};

// config: the device's config space as read from the transport (256 or 4096 bytes).
// Malformed lists (loops, pointers out of range) end the walk instead of failing. hide_msix: MSI-X is
// hidden too (its table cannot be emulated), all 12 bytes of it.
CapabilityPlan plan_capabilities(std::span<const uint8_t> config, bool hide_msix = false);

// Capability ids (PCI spec).
inline constexpr uint16_t kCapPm = 0x01, kCapVpd = 0x03, kCapMsi = 0x05, kCapVendor = 0x09, kCapPcie = 0x10,
                          kCapMsix = 0x11, kCapAdvancedFeatures = 0x13, kCapEnhancedAllocation = 0x14;
inline constexpr uint16_t kExtSriov = 0x10, kExtMriov = 0x11, kExtResizableBar = 0x15, kExtVfResizableBar = 0x24,
                          kExtAts = 0x0f, kExtPri = 0x13, kExtPasid = 0x1b, kExtMulticast = 0x12, kExtAri = 0x0e;

}  // namespace passvm::passthru
