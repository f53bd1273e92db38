// The factory lives apart from the device so that code using PassthruDevice with another Platform (tests)
// does not link against KVM.
#include "passthru/kvm_platform.h"
#include "passthru/passthru_device.h"

namespace passvm::passthru {

std::unique_ptr<PassthruDevice> open_passthru(const std::string& bdf, vfio::Container& container, Vm& vm, Bus& pio,
                                              Bus& mmio, PassthruOptions options) {
  return open_passthru(container.open_device(vfio::parse_bdf(bdf)), vm, pio, mmio, options);
}

std::unique_ptr<PassthruDevice> open_passthru(std::unique_ptr<vfio::Device> device, Vm& vm, Bus& pio, Bus& mmio,
                                              PassthruOptions options) {
  return std::make_unique<PassthruDevice>(std::move(device), std::make_unique<KvmPlatform>(vm, pio, mmio), options);
}

}  // namespace passvm::passthru
