// vfio: PCI addresses of host devices as users write them.
//
// lspci prints "0000:00:03.0" or "00:03.0" (hex); bhyve users write "0/3/0"
// (decimal bus/slot/function, as in pptdevs and -s N,passthru,B/S/F). All of
// them name the same sysfs directory, /sys/bus/pci/devices/0000:00:03.0.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace passvm::vfio {

struct Bdf {
  uint32_t domain = 0;   // 0..0xffff
  uint32_t bus = 0;      // 0..255
  uint32_t slot = 0;     // 0..31
  uint32_t function = 0; // 0..7

  // Throws VfioError naming the text and the accepted forms.
  static Bdf parse(std::string_view text);
  std::string str() const;  // "DDDD:BB:SS.F", the sysfs name
  bool operator==(const Bdf&) const = default;
};

}  // namespace passvm::vfio
