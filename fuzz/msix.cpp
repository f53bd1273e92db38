// Fuzz target: the guest's MMIO accesses to the emulated MSI-X table and PBA of a passthrough device
// (src/passthru), at any offset and length around them, with MSI-X enabled, masked and reprogrammed
// in between through config space (passthru_harness.h).
#include <cstddef>
#include <cstdint>

#include "fuzz/passthru_harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  passvm::fuzz::run_passthru(std::span(data, size), 0x40, 0xf0);
  return 0;
}
