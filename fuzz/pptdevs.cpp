// Fuzz target: /etc/passvm/pptdevs.conf (src/host/pptdevs_config), which passvm-host reads at boot as
// root. Whatever the text, the parser must either return devices or throw HostError; and the devices
// it returns (address and owner), written back out one a line, must parse to the same list.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "host/host_error.h"
#include "host/pptdevs_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace passvm::host;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<ConfiguredDevice> devices;
  try {
    devices = parse_pptdevs(text, "pptdevs.conf");
  } catch (const HostError&) {
    return 0;
  }
  std::string again;
  for (const ConfiguredDevice& d : devices) again += d.address.str() + (d.user.empty() ? "" : " user=" + d.user) + "\n";
  if (parse_pptdevs(again, "again") != devices) {
    std::fprintf(stderr, "the parsed devices do not parse back to themselves: %s\n", again.c_str());
    std::abort();
  }
  return 0;
}
