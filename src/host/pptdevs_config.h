// host: the persistent reservation list, /etc/passvm/pptdevs.conf.
//
// It names the devices the host must never drive: they are claimed for
// vfio-pci at boot. Two spellings are accepted so a bhyve loader.conf line can
// be pasted as is: one or more addresses per line, or
//   pptdevs="1/0/0 2/0/0"      (also pptdevs2=, pptdevs3=, as bhyve allows)
// '#' starts a comment. Any address form PciAddress::parse takes is valid.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "host/pci_address.h"
#include "host/sysroot.h"

namespace passvm::host {

inline constexpr std::string_view kDefaultConfigPath = "/etc/passvm/pptdevs.conf";

// Parses the text of a config; `origin` names it in errors ("pptdevs.conf:3: ...").
// Duplicates are dropped, first occurrence order is kept. Throws HostError.
std::vector<PciAddress> parse_pptdevs(std::string_view text, std::string_view origin);

// nullopt when the file does not exist.
std::optional<std::vector<PciAddress>> load_pptdevs(const Sysroot& sysroot, std::string_view host_path);

}  // namespace passvm::host
