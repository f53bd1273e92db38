// Fuzz target: /etc/passvm/pptdevs.conf (src/host/pptdevs_config), which passvm-host reads at boot as
// root. Whatever the text, the parser must return (devices from the lines it could read, an error for
// each line it could not) and throw nothing; and the devices it returns (address, owner, id), written
// back out one a line, must parse to the same devices with no error.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "host/pptdevs_config.h"

namespace {

bool same_devices(const std::vector<passvm::host::ConfiguredDevice>& a,
                  const std::vector<passvm::host::ConfiguredDevice>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (a[i].address != b[i].address || a[i].user != b[i].user || a[i].id != b[i].id) return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace passvm::host;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  PptdevsConfig config = parse_pptdevs(text, "pptdevs.conf");
  std::string again;
  for (const ConfiguredDevice& d : config.devices)
    again += d.address.str() + (d.user.empty() ? "" : " user=" + d.user) + (d.id ? " id=" + d.id->str() : "") + "\n";
  PptdevsConfig reparsed = parse_pptdevs(again, "again");
  if (!reparsed.errors.empty() || !same_devices(reparsed.devices, config.devices)) {
    std::fprintf(stderr, "the parsed devices do not parse back to themselves: %s\n", again.c_str());
    std::abort();
  }
  return 0;
}
