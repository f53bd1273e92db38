// passthru: device-specific steps when a device changes hands.
//
// A device is handed over twice per run: from its previous owner to our guest (after
// vfio-pci's reset at open) and from our guest to its next owner (before the release,
// when vfio-pci resets it again). The generic reset is supposed to make both safe. Some
// devices' resets leave their DMA engines programmed: the device then keeps the previous
// owner's descriptor rings, and the moment the next guest turns bus mastering on (Linux
// drivers do that before they reset the hardware themselves) it fetches "descriptors"
// from whatever the new guest keeps at those addresses and writes packets where they
// say: silent corruption of guest RAM, or IOMMU faults where they point outside it.
//
// quiesce_for_handover() puts such a device in its reset state by hand, through its own
// registers, with bus mastering off throughout so that nothing moves meanwhile. It knows
// the devices listed in handover.cpp and leaves every other device alone. A guest may have left
// the device in D3hot, where its registers cannot be reached: it is put back in D0 first.
//
// Lifetime: a function, called by PassthruDevice with the device open (after the reset at
// open, and before the release); it leaves the command register as it found it, with bus
// mastering off, and a known device in D0.
#pragma once

#include <cstdint>
#include <string>

#include "vfio/device.h"

namespace passvm::passthru {

struct HandoverState {
  bool known = false;    // the device is one this file has steps for
  bool active = false;   // it was found with a DMA engine on
  std::string found;     // what it was found doing, for the user ("receive on, ring at 0x...")
};

// Stops the device's DMA engines and clears its ring registers when it is one with a reset that
// does not; returns what it found. Throws vfio::VfioError when the device cannot be reached (its rings then
// survive: the caller tells the user).
HandoverState quiesce_for_handover(vfio::Device& dev);

}  // namespace passvm::passthru
