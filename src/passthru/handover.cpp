#include "passthru/handover.h"

#include <fmt/format.h>

#include <array>
#include <chrono>
#include <thread>
#include <vector>

#include "passthru/capabilities.h"
#include "pci/pci_device.h"

namespace passvm::passthru {
namespace {

constexpr uint32_t kCommand = 0x04;
constexpr uint16_t kMemoryDecode = 0x2, kBusMaster = 0x4;

uint32_t read32(vfio::Device& dev, uint32_t region, uint64_t off) {
  uint8_t b[4];
  dev.read(region, off, b);
  return pci::load_le(b, 4);
}

void write32(vfio::Device& dev, uint32_t region, uint64_t off, uint32_t v) {
  uint8_t b[4];
  pci::store_le(b, 4, v);
  dev.write(region, off, b);
}

// Intel 82574L (the e1000e family): PCIe FLR is optional and QEMU's model of it has none; its PM
// reset and, in QEMU before 8.0, its CTRL.RST leave RCTL, TCTL and the ring registers as they were.
// Register offsets from the 82574 datasheet, section 10.
namespace i82574 {
constexpr uint32_t kIcr = 0xc0, kImc = 0xd8, kRctl = 0x100, kTctl = 0x400;
constexpr uint32_t kEnable = 0x2;  // RCTL.EN and TCTL.EN
// Receive queues 0 and 1, transmit queues 0 and 1: base low, base high, length, head, tail.
constexpr std::array<uint32_t, 4> kQueues = {0x2800, 0x2900, 0x3800, 0x3900};
constexpr std::array<uint32_t, 5> kQueueRegs = {0x00, 0x04, 0x08, 0x10, 0x18};

HandoverState quiesce(vfio::Device& dev) {
  HandoverState st;
  st.known = true;
  const uint32_t rctl = read32(dev, 0, kRctl), tctl = read32(dev, 0, kTctl);
  st.active = (rctl & kEnable) || (tctl & kEnable);
  if (st.active) {
    const uint64_t ring = (uint64_t{read32(dev, 0, 0x2804)} << 32) | read32(dev, 0, 0x2800);
    st.found = fmt::format("receive {} (RCTL {:#x}, ring at {:#x}, {} bytes, head {} tail {}), transmit {}",
                           rctl & kEnable ? "on" : "off", rctl, ring, read32(dev, 0, 0x2808),
                           read32(dev, 0, 0x2810), read32(dev, 0, 0x2818), tctl & kEnable ? "on" : "off");
  }
  write32(dev, 0, kImc, 0xffffffff);
  write32(dev, 0, kRctl, 0);
  write32(dev, 0, kTctl, 0);
  for (uint32_t q : kQueues)
    for (uint32_t r : kQueueRegs) write32(dev, 0, q + r, 0);
  (void)read32(dev, 0, kIcr);  // read-to-clear: no cause from the old owner survives
  return st;
}
}  // namespace i82574

// vfio-pci refuses BAR access to a device out of D0 (and a device in D3hot ignores its registers), so a
// device its guest left asleep is woken first. The kernel waits out the D3hot-to-D0 recovery time when
// it makes the transition; the 10 ms here (the PCI PM spec's figure) are for a transport that does not.
void wake(vfio::Device& dev) {
  std::vector<uint8_t> config(256);
  dev.read(VFIO_PCI_CONFIG_REGION_INDEX, 0, config);
  const std::optional<uint32_t> pm = plan_capabilities(config).pm;
  if (!pm) return;
  const uint32_t pmcsr = *pm + 4;
  const uint16_t was = static_cast<uint16_t>(pci::load_le(&config[pmcsr], 2));
  if ((was & 3) == 0) return;
  constexpr uint16_t kPmeStatus = 0x8000;  // write-one-to-clear: written as 0, so it is left alone
  uint8_t b[2];
  pci::store_le(b, 2, static_cast<uint16_t>(was & ~(3u | kPmeStatus)));
  dev.write(VFIO_PCI_CONFIG_REGION_INDEX, pmcsr, b);
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  dev.read(VFIO_PCI_CONFIG_REGION_INDEX, pmcsr, b);
  if ((b[0] & 3) != 0)
    throw vfio::VfioError(fmt::format("it was left in D{} and did not come back to D0 (PMCSR {:#06x})", was & 3,
                                      pci::load_le(b, 2)));
}

struct Known {
  uint16_t vendor, device;
  uint64_t bar0_min;  // registers the steps touch must lie inside BAR0
  HandoverState (*quiesce)(vfio::Device&);
};
constexpr std::array<Known, 1> kKnown = {{{0x8086, 0x10d3, 0x4000, i82574::quiesce}}};

}  // namespace

HandoverState quiesce_for_handover(vfio::Device& dev) {
  const uint32_t id = read32(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0);
  for (const Known& k : kKnown) {
    if (id != (uint32_t{k.device} << 16 | k.vendor)) continue;
    if (dev.region_info(VFIO_PCI_BAR0_REGION_INDEX).size < k.bar0_min) return {};
    // Register access needs memory decoding; bus mastering stays off so nothing moves while the rings
    // are cleared. The command register is put back as found: the caller decides what the guest sees.
    uint8_t cmd[2];
    dev.read(VFIO_PCI_CONFIG_REGION_INDEX, kCommand, cmd);
    const uint16_t command = static_cast<uint16_t>(pci::load_le(cmd, 2));
    auto set_command = [&](uint16_t v) {
      pci::store_le(cmd, 2, v);
      dev.write(VFIO_PCI_CONFIG_REGION_INDEX, kCommand, cmd);
    };
    set_command(static_cast<uint16_t>((command | kMemoryDecode) & ~kBusMaster));
    HandoverState st;
    try {
      wake(dev);
      st = k.quiesce(dev);
    } catch (...) {
      set_command(command & ~kBusMaster);
      throw;
    }
    set_command(command & ~kBusMaster);
    return st;
  }
  return {};
}

}  // namespace passvm::passthru
