// host: the persistent reservation list, /etc/passvm/pptdevs.conf.
//
// It names the devices the host must never drive: they are claimed for
// vfio-pci at boot. Two spellings are accepted so a bhyve loader.conf line can
// be pasted as is: one or more addresses per line, or
//   pptdevs="1/0/0 2/0/0"      (also pptdevs2=, pptdevs3=, as bhyve allows)
// '#' starts a comment. Any address form PciAddress::parse takes is valid.
//
// A line of addresses may also carry options, words of the form key=value in
// any position; they apply to every address on that line and to nothing else:
//   0000:03:00.0 user=alice     /dev/vfio/GROUP is given to alice
// bhyve lines take no options, and a word is an option exactly when it
// contains '=' (no address form does), so no line reads two ways.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "host/pci_address.h"
#include "host/sysroot.h"

namespace passvm::host {

inline constexpr std::string_view kDefaultConfigPath = "/etc/passvm/pptdevs.conf";

struct ConfiguredDevice {
  PciAddress address;
  std::string user;  // who gets the device's VFIO group; "" leaves it to root
  bool operator==(const ConfiguredDevice&) const = default;
};

// Parses the text of a config; `origin` names it in errors ("pptdevs.conf:3: ...").
// Duplicates are dropped, first occurrence order is kept; a device listed twice with
// different users is an error. Throws HostError.
std::vector<ConfiguredDevice> parse_pptdevs(std::string_view text, std::string_view origin);

// nullopt when the file does not exist.
std::optional<std::vector<ConfiguredDevice>> load_pptdevs(const Sysroot& sysroot, std::string_view host_path);

}  // namespace passvm::host
