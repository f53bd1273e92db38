// Fuzz target: the guest's config-space accesses to a passthrough device (src/passthru). The input is the
// device variant, then operations: reads and writes at any offset and size, BAR and ROM sizing, command
// register changes, MSI and MSI-X programming, writes into the capabilities, BAR placement by the root
// complex, and now and then a trapped BAR access (passthru_harness.h).
#include <cstddef>
#include <cstdint>

#include "fuzz/passthru_harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  passvm::fuzz::run_passthru(std::span(data, size), 0xe0, 0xf0);
  return 0;
}
