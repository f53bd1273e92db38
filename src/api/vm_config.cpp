// api: cloud-hypervisor's VmConfig JSON <-> MachineConfig (see vm_config.h for the rules).
//
// Field names, defaults and value sets are cloud-hypervisor's (vmm/src/vm_config.rs; the OpenAPI
// document vmm/src/api/openapi/cloud-hypervisor.yaml). cloud-hypervisor treats null like an absent
// Option field, so null is "absent" here too.
#include "api/vm_config.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "host/host_error.h"
#include "host/pci_address.h"
#include "vmm/control.h"

namespace passvm::api {

namespace {

using nlohmann::json;
using Kind = ControlError::Kind;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kDefaultMemory = 512 * kMiB;  // cloud-hypervisor's DEFAULT_MEMORY_MB
constexpr uint32_t kMaxVcpus = 64;               // passvm's limit, as on its command line
constexpr std::string_view kSysfsDevices = "/sys/bus/pci/devices/";

[[noreturn]] void refuse(std::string_view field, std::string_view why) {
  throw ControlError(Kind::BadRequest, fmt::format("{}: {}", field, why));
}

std::string path_of(std::string_view parent, std::string_view key) {
  return parent.empty() ? std::string(key) : fmt::format("{}.{}", parent, key);
}

// A member, or nullptr when absent or null.
const json* member(const json& object, std::string_view key) {
  auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

// Whether a field asks for something: cloud-hypervisor's "off" for each is absent, null, false, 0,
// an empty string or an empty list.
bool requested(const json* value) {
  if (!value) return false;
  if (value->is_boolean()) return value->get<bool>();
  if (value->is_number()) return value->get<double>() != 0;
  if (value->is_string() || value->is_array()) return !value->empty();
  return true;  // an object
}

// A value as an error message shows it: scalars as they are, containers by their type (printing a
// container recurses, and a body nested a hundred thousand deep would take the thread's stack with it).
std::string shown(const json& v) { return v.is_primitive() ? v.dump() : std::string(v.type_name()); }

const json* object_member(const json& object, std::string_view key, std::string_view path) {
  const json* v = member(object, key);
  if (v && !v->is_object()) refuse(path, fmt::format("expected an object, got {}", v->type_name()));
  return v;
}

std::optional<uint64_t> unsigned_member(const json& object, std::string_view key, std::string_view path) {
  const json* v = member(object, key);
  if (!v) return std::nullopt;
  if (!v->is_number_unsigned() && !(v->is_number_integer() && v->get<int64_t>() >= 0))
    refuse(path, fmt::format("expected a non-negative integer, got {}", shown(*v)));
  return v->get<uint64_t>();
}

std::optional<bool> bool_member(const json& object, std::string_view key, std::string_view path) {
  const json* v = member(object, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) refuse(path, fmt::format("expected true or false, got {}", shown(*v)));
  return v->get<bool>();
}

std::optional<std::string> string_member(const json& object, std::string_view key, std::string_view path) {
  const json* v = member(object, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) refuse(path, fmt::format("expected a string, got {}", shown(*v)));
  std::string text = v->get<std::string>();
  // A path with a NUL would be checked and opened only up to it: another file than the one named.
  if (text.find('\0') != std::string::npos)
    refuse(path, "contains a NUL character (\\u0000), which no path, name or command line may");
  return text;
}

struct Refusal {
  std::string_view field;
  std::string_view why;
  bool zero_asks = false;  // a number names something (slot 0, clique 0): any number is a request
};

template <size_t N>
void refuse_requested(const json& object, std::string_view parent, const std::array<Refusal, N>& list) {
  for (const Refusal& r : list) {
    const json* v = member(object, r.field);
    if (requested(v) || (r.zero_asks && v && v->is_number())) refuse(path_of(parent, r.field), r.why);
  }
}

const std::array kTopLevel{
    Refusal{"disks", "passvm has no virtio devices (no virtio-blk); pass a storage controller (e.g. an NVMe drive) "
                     "through with devices[] instead, or boot from payload.initramfs"},
    Refusal{"net", "passvm has no virtio devices (no virtio-net); pass a NIC or one of its VFs through with "
                   "devices[] instead"},
    Refusal{"fs", "passvm has no virtio devices (no virtio-fs); put the files in payload.initramfs or pass a "
                  "storage device through with devices[] instead"},
    Refusal{"pmem", "passvm has no virtio devices (no virtio-pmem); pass a storage device through with devices[] "
                    "instead"},
    Refusal{"vsock", "passvm has no virtio devices; pass a device through with devices[] instead"},
    Refusal{"balloon", "passvm has no virtio devices (no balloon): guest RAM stays memory.size; omit balloon"},
    Refusal{"vdpa", "passvm has no vDPA devices; pass the device (or one of its VFs) through with devices[] instead"},
    Refusal{"user_devices", "passvm has no vfio-user devices; pass a host PCI device through with devices[] instead"},
    Refusal{"generic_vhost_user", "passvm has no vhost-user devices; pass a device through with devices[] instead"},
    Refusal{"numa", "passvm gives the guest a single NUMA node; omit numa"},
    Refusal{"tpm", "passvm has no TPM; omit tpm"},
    Refusal{"iommu", "passvm gives the guest no virtual IOMMU (all guest RAM is mapped for the devices' DMA); set "
                     "iommu to false"},
    Refusal{"watchdog", "passvm has no watchdog device; set watchdog to false"},
    Refusal{"rate_limit_groups", "rate limit groups apply to virtio disks, which passvm does not have; omit them"},
    Refusal{"landlock_enable", "passvm does not confine itself with Landlock; set landlock_enable to false"},
    Refusal{"landlock_rules", "passvm does not confine itself with Landlock; omit landlock_rules"},
    Refusal{"sgx_epc", "passvm gives the guest no SGX enclave memory; omit sgx_epc"},
    Refusal{"ivshmem", "passvm has no ivshmem device; omit ivshmem"},
    Refusal{"pvmemcontrol", "passvm has no pvmemcontrol device; omit pvmemcontrol"},
};

const std::array kMemory{
    Refusal{"hotplug_size", "passvm has no memory hotplug: guest RAM is memory.size, allocated (and pinned for DMA) "
                            "at boot; omit hotplug_size"},
    Refusal{"hotplugged_size", "passvm has no memory hotplug; omit hotplugged_size"},
    Refusal{"zones", "passvm backs guest RAM with one region of memory.size; omit zones"},
};

const std::array kCpus{
    Refusal{"kvm_hyperv", "passvm offers no Hyper-V enlightenments; set kvm_hyperv to false"},
    Refusal{"affinity", "passvm does not pin vCPU threads; omit affinity and pin the passvm process instead (taskset)"},
};

const std::array kPayload{
    Refusal{"firmware", "passvm boots Linux directly, without firmware; give payload.kernel (a bzImage) instead"},
    Refusal{"igvm", "passvm boots Linux directly, without IGVM files; give payload.kernel (a bzImage) instead"},
    Refusal{"host_data", "passvm runs no confidential guests; omit host_data"},
};

const std::array kPlatform{
    Refusal{"tdx", "passvm runs no confidential guests; set tdx to false"},
    Refusal{"sev_snp", "passvm runs no confidential guests; set sev_snp to false"},
    Refusal{"iommu_segments", "passvm gives the guest no virtual IOMMU; omit iommu_segments"},
};

const std::array kDevice{
    Refusal{"iommu", "passvm gives the guest no virtual IOMMU (the device's DMA reaches all guest RAM); set iommu to "
                     "false"},
    Refusal{"pci_device_id", "passvm picks the guest slot itself (vm.info and vm.add-device report it); omit "
                             "pci_device_id", true},
    Refusal{"x_nv_gpudirect_clique", "passvm does not describe GPUDirect cliques to the guest; omit it", true},
    Refusal{"x_exclude_mmap_bars", "passvm maps every BAR it can into the guest; omit x_exclude_mmap_bars"},
};

// Checks an Off|Null|... console mode; returns it.
std::string console_mode(const json& config, std::string_view key) {
  const json* c = object_member(config, key, key);
  if (!c) return {};
  auto mode = string_member(*c, "mode", path_of(key, "mode"));
  if (!mode) refuse(path_of(key, "mode"), "missing; one of Off, Pty, Tty, File, Socket, Null");
  static const std::set<std::string> known{"Off", "Pty", "Tty", "File", "Socket", "Null"};
  if (!known.count(*mode))
    refuse(path_of(key, "mode"), fmt::format("unknown mode '{}'; one of Off, Pty, Tty, File, Socket, Null", *mode));
  return *mode;
}

void parse_cpus(const json& body, MachineConfig& cfg) {
  const json* cpus = object_member(body, "cpus", "cpus");
  if (!cpus) {
    cfg.cpus = 1;  // cloud-hypervisor's DEFAULT_VCPUS
    return;
  }
  auto boot = unsigned_member(*cpus, "boot_vcpus", "cpus.boot_vcpus");
  if (!boot) refuse("cpus.boot_vcpus", "missing; give the number of vCPUs, 1 to 64");
  if (*boot < 1 || *boot > kMaxVcpus) refuse("cpus.boot_vcpus", fmt::format("{} is out of range: 1 to 64", *boot));
  auto max = unsigned_member(*cpus, "max_vcpus", "cpus.max_vcpus");
  if (max && *max != *boot)
    refuse("cpus.max_vcpus", fmt::format("{} differs from boot_vcpus ({}): passvm has no CPU hotplug; set max_vcpus "
                                         "to boot_vcpus (Kata: default_maxvcpus = default_vcpus)",
                                         *max, *boot));
  refuse_requested(*cpus, "cpus", kCpus);
  if (const json* features = object_member(*cpus, "features", "cpus.features"))
    if (bool_member(*features, "amx", "cpus.features.amx").value_or(false))
      refuse("cpus.features.amx", "passvm does not give guests AMX state; set it false");
  // nested: false takes VMX and SVM out of the guest's CPUID (cloud-hypervisor's default is true).
  cfg.nested = bool_member(*cpus, "nested", "cpus.nested").value_or(true);
  // topology, max_phys_bits, core_scheduling and profile are ignored: passvm describes one package of
  // boot_vcpus single-threaded cores (kvm/cpuid.cpp), and another topology would change the guest
  // scheduler's hints, not what the guest can run (Kata sends cores_per_die = max_vcpus).
  cfg.cpus = static_cast<uint32_t>(*boot);
}

void parse_memory(const json& body, MachineConfig& cfg) {
  const json* memory = object_member(body, "memory", "memory");
  if (!memory) {
    cfg.memory = kDefaultMemory;
    return;
  }
  auto size = unsigned_member(*memory, "size", "memory.size");
  if (!size) refuse("memory.size", "missing; give guest RAM in bytes, e.g. 536870912 for 512 MiB");
  refuse_requested(*memory, "memory", kMemory);
  cfg.hugepages = bool_member(*memory, "hugepages", "memory.hugepages").value_or(false);
  if (*size < 16 * kMiB)
    refuse("memory.size", fmt::format("{} bytes is too small: a guest needs at least 16 MiB", *size));
  if (*size % 4096 != 0) refuse("memory.size", fmt::format("{} is not a whole number of 4 KiB pages", *size));
  if (cfg.hugepages && *size % (2 * kMiB) != 0)
    refuse("memory.size", fmt::format("{} is not a multiple of 2 MiB, which hugepages needs", *size));
  if (auto page = unsigned_member(*memory, "hugepage_size", "memory.hugepage_size")) {
    if (!cfg.hugepages) refuse("memory.hugepage_size", "needs memory.hugepages set to true");
    // passvm takes 1 GiB pages when the size is a multiple of 1 GiB and the pool has enough, else
    // 2 MiB ones; either request is one of the outcomes it may choose.
    if (*page != 2 * kMiB && *page != kGiB)
      refuse("memory.hugepage_size", fmt::format("{}: passvm uses 2 MiB or 1 GiB huge pages", *page));
  }
  if (!bool_member(*memory, "thp", "memory.thp").value_or(true) && !cfg.hugepages)
    refuse("memory.thp", "passvm always asks for transparent huge pages for guest RAM (the IOMMU then maps it in "
                         "2 MiB pages); omit thp or set it true");
  // shared and mergeable are ignored: shared mappings only matter to vhost-user backends, which passvm
  // refuses above, and KSM cannot merge RAM that is pinned for DMA. prefault and reserve are ignored
  // too: with a device passed through every page is allocated and pinned as the guest starts.
  // hotplug_method only matters with hotplug_size.
  cfg.memory = *size;
}

void parse_payload(const json& body, MachineConfig& cfg) {
  if (const json* payload = object_member(body, "payload", "payload")) {
    refuse_requested(*payload, "payload", kPayload);
    cfg.kernel = string_member(*payload, "kernel", "payload.kernel").value_or("");
    cfg.cmdline = string_member(*payload, "cmdline", "payload.cmdline").value_or("");
    cfg.initrd = string_member(*payload, "initramfs", "payload.initramfs").value_or("");
  }
  // cloud-hypervisor before v28 had these at the top level; older clients still send them.
  if (const json* kernel = object_member(body, "kernel", "kernel"); kernel && cfg.kernel.empty())
    cfg.kernel = string_member(*kernel, "path", "kernel.path").value_or("");
  if (const json* cmdline = object_member(body, "cmdline", "cmdline"); cmdline && cfg.cmdline.empty())
    cfg.cmdline = string_member(*cmdline, "args", "cmdline.args").value_or("");
  if (const json* initramfs = object_member(body, "initramfs", "initramfs"); initramfs && cfg.initrd.empty())
    cfg.initrd = string_member(*initramfs, "path", "initramfs.path").value_or("");
  if (cfg.kernel.empty()) refuse("payload.kernel", "missing; passvm boots a Linux kernel (bzImage) directly");
}

// A console passvm connects to its own terminal or to nothing: "stdio" for Tty, "" when absent, Off or Null;
// any other mode is refused with `what` (how passvm connects it).
std::string tty_or_nothing(const json& body, std::string_view key, std::string_view what) {
  std::string mode = console_mode(body, key);
  if (mode == "Tty") return "stdio";
  if (mode.empty() || mode == "Off" || mode == "Null") return "";
  refuse(path_of(key, "mode"), fmt::format("{}: {}", mode, what));
}

void parse_consoles(const json& body, MachineConfig& cfg) {
  // cloud-hypervisor's default serial mode is Null: the UART exists and its output goes nowhere.
  cfg.com1 = tty_or_nothing(body, "serial",
                            "passvm connects COM1 (the guest's ttyS0) to its own terminal (Tty) or to nothing (Off, Null)");
  // The virtio console (the guest's hvc0). cloud-hypervisor's default is one on its terminal; passvm adds it
  // only when asked, so that a config without it keeps the guest's device list as it was.
  cfg.virtio_console = tty_or_nothing(body, "console",
                                      "passvm connects the virtio console (the guest's hvc0) to its own terminal (Tty) "
                                      "or leaves it out (Off, Null)");
  std::string debug = console_mode(body, "debug_console");
  if (!debug.empty() && debug != "Off" && debug != "Null")
    refuse("debug_console.mode", fmt::format("{}: passvm has no debug console port; set it to Off", debug));
}

void parse_rng(const json& body) {
  // cloud-hypervisor gives every VM a virtio-rng on /dev/urandom (RngConfig::default()), and its
  // clients send that default back in every config; passvm has no virtio-rng, so exactly that default
  // is accepted (and means nothing), anything else is refused.
  const json* rng = object_member(body, "rng", "rng");
  if (!rng) return;
  auto src = string_member(*rng, "src", "rng.src");
  if ((src && *src != "/dev/urandom") || requested(member(*rng, "iommu")) || requested(member(*rng, "pci_segment")) ||
      requested(member(*rng, "pci_device_id")))
    refuse("rng", "passvm has no virtio-rng (the guest's kernel seeds itself from RDRAND); only cloud-hypervisor's "
                  "default {\"src\": \"/dev/urandom\"} is accepted");
}

// platform: returns whether devices may be targets of peer-to-peer DMA (vfio_p2p_dma).
bool parse_platform(const json& body) {
  const json* platform = object_member(body, "platform", "platform");
  if (!platform) return true;
  refuse_requested(*platform, "platform", kPlatform);
  // num_pci_segments is ignored: Kata asks for 2 to put virtio-fs on segment 1, and nothing passvm
  // accepts sits anywhere but segment 0. iommufd is how the VMM drives VFIO on the host, passvm's
  // business. The SMBIOS strings (uuid, serial_number, oem_strings, ...) are ignored: passvm gives
  // the guest no SMBIOS tables.
  return bool_member(*platform, "vfio_p2p_dma", "platform.vfio_p2p_dma").value_or(true);
}

void parse_pci_segments(const json& body) {
  const json* segments = member(body, "pci_segments");
  if (!segments) return;
  if (!segments->is_array()) refuse("pci_segments", fmt::format("expected a list, got {}", segments->type_name()));
  for (size_t i = 0; i < segments->size(); i++) {
    std::string path = fmt::format("pci_segments[{}]", i);
    const json& s = (*segments)[i];
    if (!s.is_object()) refuse(path, fmt::format("expected an object, got {}", s.type_name()));
    if (unsigned_member(s, "pci_segment", path + ".pci_segment").value_or(0) != 0)
      refuse(path + ".pci_segment", "passvm has one PCI segment, 0");
    // The aperture weights share the MMIO windows between segments; with one segment there is nothing to share.
  }
}

// One DeviceConfig, at `path` ("devices[2]" or "" for vm.add-device's body).
DeviceRequest parse_device(const json& device, const std::string& path) {
  if (!device.is_object())
    refuse(path.empty() ? "body" : path, fmt::format("expected a DeviceConfig object, got {}", device.type_name()));
  auto sysfs = string_member(device, "path", path_of(path, "path"));
  if (!sysfs)
    refuse(path_of(path, "path"), "missing; give the host device's sysfs path, e.g. "
                                  "\"/sys/bus/pci/devices/0000:01:00.0/\" (passvm does not take VFIO file "
                                  "descriptors)");
  refuse_requested(device, path, kDevice);
  if (unsigned_member(device, "pci_segment", path_of(path, "pci_segment")).value_or(0) != 0)
    refuse(path_of(path, "pci_segment"), "passvm has one PCI segment, 0");
  return {host_bdf(*sysfs, path_of(path, "path")), string_member(device, "id", path_of(path, "id")).value_or("")};
}

void parse_devices(const json& body, bool p2p, MachineConfig& cfg) {
  const json* devices = member(body, "devices");
  if (!devices) return;
  if (!devices->is_array()) refuse("devices", fmt::format("expected a list, got {}", devices->type_name()));
  // Slot 0 is the host bridge's; more could never be placed, and each one is compared with all before it.
  if (devices->size() > 31) refuse("devices", fmt::format("{} devices, but a VM has 31 PCI slots", devices->size()));
  for (size_t i = 0; i < devices->size(); i++) {
    std::string path = fmt::format("devices[{}]", i);
    DeviceRequest d = parse_device((*devices)[i], path);
    for (size_t j = 0; j < cfg.slots.size(); j++) {
      const SlotConfig& other = cfg.slots[j];
      // 409, as cloud-hypervisor answers IdentifierNotUnique and DuplicateDevicePath.
      if (!d.id.empty() && other.id == d.id)
        throw ControlError(Kind::Conflict, fmt::format("{}.id: '{}' is also devices[{}]'s id", path, d.id, j));
      if (other.config == d.host)
        throw ControlError(Kind::Conflict, fmt::format("{}.path: {} is also devices[{}]", path, d.host, j));
    }
    SlotConfig s;
    s.slot = SlotConfig::kAnySlot;
    s.emulation = "passthru";
    s.config = d.host;
    s.id = d.id;
    s.p2p = p2p;
    cfg.slots.push_back(s);
  }
}

}  // namespace

std::string host_bdf(std::string_view text, std::string_view field) {
  std::string_view name = text;
  bool is_path = !text.empty() && text.front() == '/';
  if (is_path) {
    if (text.substr(0, kSysfsDevices.size()) != kSysfsDevices)
      refuse(field, fmt::format("'{}' is not under {}; give the host device's sysfs path, e.g. "
                                "\"/sys/bus/pci/devices/0000:01:00.0/\"",
                                text, kSysfsDevices));
    name = text.substr(kSysfsDevices.size());
    if (!name.empty() && name.back() == '/') name.remove_suffix(1);
  }
  try {
    std::string bdf = host::PciAddress::parse(name).str();
    // sysfs names devices DDDD:BB:SS.F, so a path must too; a bare address may take any form passvm's -s takes.
    std::string lower(name);
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return std::tolower(ch); });
    if (is_path && bdf != lower) throw host::HostError("sysfs names PCI devices DDDD:BB:SS.F");
    return bdf;
  } catch (const host::HostError& e) {
    refuse(field, fmt::format("'{}' does not name a PCI device: {}", text, e.what()));
  }
}

std::string json_text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sysfs_path(std::string_view bdf) { return fmt::format("{}{}/", kSysfsDevices, bdf); }

MachineConfig parse_vm_config(const json& body) {
  if (!body.is_object()) refuse("body", fmt::format("expected a VmConfig object, got {}", body.type_name()));
  refuse_requested(body, "", kTopLevel);
  // platform first: Kata's IOMMU option shows there (iommu_segments) before it shows in rng and devices.
  bool p2p = parse_platform(body);
  MachineConfig cfg;
  parse_cpus(body, cfg);
  parse_memory(body, cfg);
  parse_payload(body, cfg);
  parse_consoles(body, cfg);
  parse_rng(body);
  // cloud-hypervisor's default is no pvpanic device; with one, a guest's panic is reported and it runs on
  // (Machine::Options::stop_on_panic is off for the API).
  cfg.pvpanic = bool_member(body, "pvpanic", "pvpanic").value_or(false);
  parse_pci_segments(body);
  parse_devices(body, p2p, cfg);
  cfg.p2p = p2p;  // for devices vm.add-device brings later
  return cfg;
}

DeviceRequest parse_device_config(const json& body) { return parse_device(body, ""); }

std::string parse_remove_device(const json& body) {
  if (!body.is_object()) refuse("body", fmt::format("expected {{\"id\": \"...\"}}, got {}", body.type_name()));
  std::string id = string_member(body, "id", "id").value_or("");
  if (id.empty()) refuse("id", "missing; give the id vm.add-device or vm.info reported");
  return id;
}

json vm_config_json(const MachineConfig& cfg) {
  json payload = {{"kernel", cfg.kernel}};
  if (!cfg.cmdline.empty()) payload["cmdline"] = cfg.cmdline;
  if (!cfg.initrd.empty()) payload["initramfs"] = cfg.initrd;
  json out = {
      {"cpus", {{"boot_vcpus", cfg.cpus}, {"max_vcpus", cfg.cpus}, {"nested", cfg.nested}}},
      {"memory",
       {{"size", cfg.memory},
        {"hugepages", cfg.hugepages},
        {"shared", false},
        {"mergeable", false},
        {"hotplug_method", "Acpi"},
        {"prefault", false},
        {"thp", true}}},
      {"payload", payload},
      // passvm's UART is always there; without com1 its output goes nowhere, cloud-hypervisor's Null.
      {"serial", {{"mode", cfg.com1 == "stdio" ? "Tty" : "Null"}}},
      {"console", {{"mode", cfg.virtio_console == "stdio" ? "Tty" : "Off"}}},
      {"pvpanic", cfg.pvpanic},
  };
  json devices = json::array();
  bool p2p = cfg.p2p;
  for (const auto& s : cfg.slots) {
    if (s.emulation != "passthru") continue;
    std::string host = s.config;
    try {
      host = host::PciAddress::parse(s.config).str();  // the command line also takes bhyve's B/S/F
    } catch (const host::HostError&) {
    }
    devices.push_back({{"path", sysfs_path(host)}, {"id", s.id}});
    p2p = p2p && s.p2p;
  }
  if (!devices.empty()) out["devices"] = devices;
  out["platform"] = {{"num_pci_segments", 1}, {"vfio_p2p_dma", p2p}};
  return out;
}

}  // namespace passvm::api
