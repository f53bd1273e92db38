// vfio: PCI addresses of host devices as users write them.
//
// lspci prints "0000:00:03.0" or "00:03.0" (hex); bhyve users write "0/3/0"
// (decimal bus/slot/function, as in pptdevs and -s N,passthru,B/S/F). All of
// them name the same sysfs directory, /sys/bus/pci/devices/0000:00:03.0.
// The project has one type for them, host tooling's PciAddress; this layer only
// makes its parse errors VfioErrors, so that everything the passthrough path
// throws is of one kind.
#pragma once

#include <string_view>

#include "host/pci_address.h"

namespace passvm::vfio {

using Bdf = host::PciAddress;

// Throws VfioError naming the text and the accepted forms.
Bdf parse_bdf(std::string_view text);

}  // namespace passvm::vfio
