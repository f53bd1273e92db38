#include "pci/host_bridge.h"

namespace passvm::pci {

namespace {
constexpr uint32_t kPcieCapOffset = 0x40;
constexpr uint8_t kCapIdPcie = 0x10;
constexpr uint16_t kPcieCapVersion2 = 2;
constexpr uint16_t kPcieTypeRcIntegratedEndpoint = 0x9;
// Command bits a guest may set on a bridge with nothing to decode: I/O, memory, bus master,
// parity error response, SERR#, interrupt disable.
constexpr uint16_t kCommandWritable = 0x0001 | 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400;
}  // namespace

HostBridge::HostBridge() {
  cfg_.set(kCfgVendorId, 2, kHostBridgeVendor);
  cfg_.set(kCfgDeviceId, 2, kHostBridgeDevice);
  cfg_.set(kCfgStatus, 2, kStatusCapList);
  cfg_.set(kCfgRevision, 1, 0);
  cfg_.set(kCfgClassCode, 3, 0x060000);  // bridge / host bridge / prog-if 0
  cfg_.set(kCfgHeaderType, 1, 0);
  cfg_.set(kCfgSubsysVendor, 2, kHostBridgeVendor);
  cfg_.set(kCfgSubsysId, 2, 0x1100);
  cfg_.set(kCfgCapPtr, 1, kPcieCapOffset);

  // PCI Express capability v2, no link: DevCap/DevCtl/DevSta only matter for an endpoint.
  cfg_.set(kPcieCapOffset, 1, kCapIdPcie);
  cfg_.set(kPcieCapOffset + 1, 1, 0);  // end of list
  cfg_.set(kPcieCapOffset + 2, 2, kPcieCapVersion2 | (kPcieTypeRcIntegratedEndpoint << 4));

  cfg_.set_writable(kCfgCommand, 2, kCommandWritable);
  cfg_.set_w1c(kCfgStatus, 2, 0xf900);  // error bits: parity, signalled/received aborts, SERR
  cfg_.set_writable(kCfgCacheLine, 1, 0xff);
  cfg_.set_writable(kCfgLatency, 1, 0xff);
  cfg_.set_writable(kCfgIntLine, 1, 0xff);
  cfg_.set_writable(kPcieCapOffset + 8, 2, 0x7fff);  // Device Control
}

uint32_t HostBridge::config_read(uint32_t offset, int size) {
  std::lock_guard g(lock_);
  return cfg_.read(offset, size);
}

void HostBridge::config_write(uint32_t offset, int size, uint32_t value) {
  std::lock_guard g(lock_);
  cfg_.write(offset, size, value);
}

}  // namespace passvm::pci
