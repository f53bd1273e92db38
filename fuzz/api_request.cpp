// Fuzz target: the JSON request bodies of the control API (src/api/vm_config): vm.create's VmConfig,
// vm.add-device's DeviceConfig, vm.remove-device's {"id"}, and the device path alone (host_bdf). The
// first byte picks which, the rest is the body as it arrives on the socket. The server answers 400 for
// a ControlError only; anything else escaping a parser would be a 500 (or a crash) for a bad request.
// A config that parses must also survive vm.info's rendering of it: vm_config_json's output, fed back
// to vm.create, gives the same config.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "api/vm_config.h"
#include "vmm/control.h"

namespace {

using nlohmann::json;

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "%s: %s\n", what, detail.c_str());
  std::abort();
}

void parse(uint8_t which, const json& body, std::string_view text) {
  using namespace passvm::api;
  switch (which % 4) {
    case 0: {
      passvm::MachineConfig cfg = parse_vm_config(body);
      json shown = vm_config_json(cfg);
      json again;
      try {
        again = vm_config_json(parse_vm_config(shown));
      } catch (const std::exception& e) {
        fail("vm.info's config is refused by vm.create", e.what());
      }
      if (again != shown) fail("vm.info's config changes through vm.create", json_text(shown) + " -> " + json_text(again));
      (void)json_text(shown);
      break;
    }
    case 1: (void)parse_device_config(body); break;
    case 2: (void)parse_remove_device(body); break;
    default: (void)host_bdf(text, "path"); break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  json body;
  if (data[0] % 4 != 3) {
    try {
      body = json::parse(text);  // as the server does; a parse error is its 400 before any parser runs
    } catch (const json::exception&) {
      return 0;
    }
  }
  try {
    parse(data[0], body, text);
  } catch (const passvm::ControlError&) {
  } catch (const std::exception& e) {
    fail("a request body made a parser throw something other than ControlError", e.what());
  }
  return 0;
}
