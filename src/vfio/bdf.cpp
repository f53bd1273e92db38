#include "vfio/bdf.h"

#include "host/host_error.h"
#include "vfio/device.h"

namespace passvm::vfio {

Bdf parse_bdf(std::string_view text) {
  try {
    return host::PciAddress::parse(text);
  } catch (const host::HostError& e) {
    throw VfioError(e.what());
  }
}

}  // namespace passvm::vfio
