// pci: the host bridge at 00:00.0.
//
// Guests expect function 00:00.0 to be a host bridge (class 06/00): Linux
// probes it first and some drivers look at its IDs. Ours is a plain endpoint
// header with a PCI Express capability (root-complex integrated endpoint) so
// that the bus reads as PCIe; it has no BARs and no interrupt. Everything is
// read-only except the usual command bits, cache line size, latency timer and
// interrupt line, which firmware and OSes write and expect to read back.
#pragma once

#include <mutex>

#include "pci/config_space.h"
#include "pci/pci_device.h"

namespace passvm::pci {

// Red Hat / QEMU "PCIe host bridge": a generic ID with no OS quirks attached.
inline constexpr uint16_t kHostBridgeVendor = 0x1b36;
inline constexpr uint16_t kHostBridgeDevice = 0x0008;

class HostBridge : public PciDevice {
 public:
  HostBridge();

  uint32_t config_read(uint32_t offset, int size) override;
  void config_write(uint32_t offset, int size, uint32_t value) override;
  std::vector<BarRequest> bar_requests() const override { return {}; }
  void assign_bar(int, uint64_t) override {}
  std::string name() const override { return "host-bridge"; }

 private:
  std::mutex lock_;
  ConfigSpace cfg_;
};

}  // namespace passvm::pci
