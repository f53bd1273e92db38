#include "vfio/bdf.h"

#include "host/host_error.h"
#include "host/pci_address.h"
#include "vfio/device.h"

namespace passvm::vfio {

// One parser for host PCI addresses in the project: host tooling's. Its errors become VfioErrors here so
// that everything the passthrough path throws is of one kind.
Bdf Bdf::parse(std::string_view text) {
  try {
    host::PciAddress a = host::PciAddress::parse(text);
    return Bdf{a.domain, a.bus, a.slot, a.function};
  } catch (const host::HostError& e) {
    throw VfioError(e.what());
  }
}

std::string Bdf::str() const {
  return host::PciAddress{static_cast<uint16_t>(domain), static_cast<uint8_t>(bus), static_cast<uint8_t>(slot),
                          static_cast<uint8_t>(function)}
      .str();
}

}  // namespace passvm::vfio
