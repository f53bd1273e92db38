// VmConfig JSON -> MachineConfig and back: what is honoured, ignored and refused, and how refusals read.
#include "api/vm_config.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "vmm/control.h"

namespace passvm::api {
namespace {

using nlohmann::json;
using Kind = ControlError::Kind;

json minimal() { return {{"payload", {{"kernel", "/boot/vmlinuz"}}}}; }

// A config as cloud-hypervisor itself reports it in vm.info for `--kernel --initramfs --cmdline --cpus
// boot=2 --memory size=1G --serial tty --console off --device path=...`: every field present, defaults
// spelled out.
json full_cloud_hypervisor_config() {
  return json::parse(R"({
    "cpus": {"boot_vcpus": 2, "max_vcpus": 2, "topology": null, "kvm_hyperv": false, "max_phys_bits": 46,
             "affinity": null, "features": {"amx": false}, "nested": true, "core_scheduling": "Vm"},
    "memory": {"size": 1073741824, "mergeable": false, "hotplug_method": "Acpi", "hotplug_size": null,
               "hotplugged_size": null, "shared": false, "hugepages": false, "hugepage_size": null,
               "prefault": false, "reserve": false, "zones": null, "thp": true},
    "payload": {"firmware": null, "kernel": "/boot/vmlinuz", "cmdline": "console=ttyS0 quiet",
                "initramfs": "/boot/initrd.img"},
    "rate_limit_groups": null, "disks": null, "net": null,
    "rng": {"src": "/dev/urandom", "iommu": false},
    "balloon": null, "fs": null, "pmem": null,
    "serial": {"file": null, "mode": "Tty", "socket": null},
    "console": {"file": null, "mode": "Off", "socket": null, "iommu": false},
    "debug_console": {"file": null, "mode": "Off", "iobase": 233},
    "devices": [{"path": "/sys/bus/pci/devices/0000:00:04.0/", "iommu": false, "pci_segment": 0, "id": "nvme0",
                 "x_exclude_mmap_bars": []}],
    "user_devices": null, "vdpa": null, "vsock": null, "pvpanic": false, "iommu": false, "numa": null,
    "watchdog": false, "pci_segments": null,
    "platform": {"num_pci_segments": 1, "iommu_segments": null, "iommu_address_width_bits": 64, "iommufd": false,
                 "vfio_p2p_dma": true},
    "tpm": null, "landlock_enable": false, "landlock_rules": null
  })");
}

// The message of the ControlError parsing `body` throws, checking its kind.
std::string refusal(const json& body, Kind kind = Kind::BadRequest) {
  try {
    parse_vm_config(body);
  } catch (const ControlError& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "accepted: " << body.dump();
  return {};
}

TEST(ApiVmConfig, FullCloudHypervisorConfig) {
  MachineConfig c = parse_vm_config(full_cloud_hypervisor_config());
  EXPECT_EQ(c.cpus, 2u);
  EXPECT_EQ(c.memory, 1ull << 30);
  EXPECT_FALSE(c.hugepages);
  EXPECT_EQ(c.kernel, "/boot/vmlinuz");
  EXPECT_EQ(c.initrd, "/boot/initrd.img");
  EXPECT_EQ(c.cmdline, "console=ttyS0 quiet");
  EXPECT_EQ(c.com1, "stdio");
  ASSERT_EQ(c.slots.size(), 1u);
  EXPECT_EQ(c.slots[0].slot, SlotConfig::kAnySlot);
  EXPECT_EQ(c.slots[0].emulation, "passthru");
  EXPECT_EQ(c.slots[0].config, "0000:00:04.0");
  EXPECT_EQ(c.slots[0].id, "nvme0");
  EXPECT_TRUE(c.slots[0].p2p);
}

TEST(ApiVmConfig, MinimalConfigTakesCloudHypervisorDefaults) {
  MachineConfig c = parse_vm_config(minimal());
  EXPECT_EQ(c.cpus, 1u);
  EXPECT_EQ(c.memory, 512ull << 20);
  EXPECT_EQ(c.com1, "");  // serial defaults to Null
  EXPECT_TRUE(c.slots.empty());
  EXPECT_TRUE(c.initrd.empty());
  EXPECT_FALSE(c.pvpanic) << "cloud-hypervisor adds no pvpanic device unless asked";
  json with = minimal();
  with["pvpanic"] = true;
  EXPECT_TRUE(parse_vm_config(with).pvpanic);
  with["pvpanic"] = "yes";
  EXPECT_THROW(parse_vm_config(with), ControlError);
}

TEST(ApiVmConfig, EachUnsupportedFieldIsRefusedByName) {
  const std::vector<std::pair<json, std::string>> cases{
      {{{"disks", {{{"path", "/img"}}}}}, "disks: passvm has no virtio devices"},
      {{{"net", {{{"tap", "tap0"}}}}}, "net: passvm has no virtio devices"},
      {{{"fs", {{{"tag", "t"}, {"socket", "/s"}}}}}, "fs: "},
      {{{"pmem", {{{"file", "/f"}}}}}, "pmem: "},
      {{{"vsock", {{"cid", 3}, {"socket", "/v"}}}},
       "vsock: passvm has no virtio devices; pass a device through with devices[] instead"},
      {{{"balloon", {{"size", 0}}}}, "balloon: "},
      {{{"vdpa", {{{"path", "/dev/vhost-vdpa-0"}}}}}, "vdpa: "},
      {{{"user_devices", {{{"socket", "/u"}}}}}, "user_devices: "},
      {{{"generic_vhost_user", {{{"socket", "/g"}}}}}, "generic_vhost_user: "},
      {{{"numa", {{{"guest_numa_id", 0}}}}}, "numa: "},
      {{{"tpm", {{"socket", "/t"}}}}, "tpm: "},
      {{{"iommu", true}}, "iommu: "},
      {{{"watchdog", true}}, "watchdog: "},
      {{{"landlock_enable", true}}, "landlock_enable: "},
      {{{"memory", {{"size", 1 << 30}, {"hotplug_size", 1 << 30}}}},
       "memory.hotplug_size: passvm has no memory hotplug"},
      {{{"memory", {{"size", 1 << 30}, {"hotplugged_size", 1 << 20}}}}, "memory.hotplugged_size: "},
      {{{"memory", {{"size", 1 << 30}, {"zones", {{{"id", "z"}, {"size", 1 << 30}}}}}}}, "memory.zones: "},
      {{{"memory", {{"size", 1 << 30}, {"thp", false}}}}, "memory.thp: "},
      {{{"memory", {{"size", 1 << 30}, {"hugepage_size", 2 << 20}}}}, "memory.hugepage_size: needs memory.hugepages"},
      {{{"memory", {{"size", 1 << 30}, {"hugepages", true}, {"hugepage_size", 64 << 10}}}}, "memory.hugepage_size: "},
      {{{"cpus", {{"boot_vcpus", 2}, {"max_vcpus", 8}}}}, "cpus.max_vcpus: 8 differs from boot_vcpus (2)"},
      {{{"cpus", {{"boot_vcpus", 2}, {"kvm_hyperv", true}}}}, "cpus.kvm_hyperv: "},
      {{{"cpus", {{"boot_vcpus", 1}, {"affinity", {{{"vcpu", 0}, {"host_cpus", {3}}}}}}}}, "cpus.affinity: "},
      {{{"cpus", {{"boot_vcpus", 1}, {"features", {{"amx", true}}}}}}, "cpus.features.amx: "},
      {{{"payload", {{"kernel", "/k"}, {"firmware", "/fw"}}}}, "payload.firmware: passvm boots Linux directly"},
      {{{"payload", {{"kernel", "/k"}, {"igvm", "/i"}}}}, "payload.igvm: "},
      {{{"platform", {{"tdx", true}}}}, "platform.tdx: "},
      {{{"platform", {{"iommu_segments", {0}}}}}, "platform.iommu_segments: "},
      {{{"serial", {{"mode", "Pty"}}}}, "serial.mode: Pty: passvm connects COM1"},
      {{{"serial", {{"mode", "File"}, {"file", "/log"}}}}, "serial.mode: File"},
      {{{"serial", {{"mode", "tty"}}}}, "serial.mode: unknown mode 'tty'"},
      {{{"console", {{"mode", "Pty"}}}}, "console.mode: Pty: passvm connects the virtio console"},
      {{{"debug_console", {{"mode", "Tty"}}}}, "debug_console.mode: "},
      {{{"rng", {{"src", "/dev/random"}}}}, "rng: passvm has no virtio-rng"},
      {{{"rng", {{"src", "/dev/urandom"}, {"iommu", true}}}}, "rng: "},
      {{{"pci_segments", {{{"pci_segment", 1}}}}}, "pci_segments[0].pci_segment: passvm has one PCI segment"},
      {{{"devices", {{{"path", "/sys/bus/pci/devices/0000:00:04.0"}, {"iommu", true}}}}}, "devices[0].iommu: "},
      {{{"devices", {{{"path", "/sys/bus/pci/devices/0000:00:04.0"}, {"pci_segment", 1}}}}},
       "devices[0].pci_segment: "},
      {{{"devices", {{{"path", "/sys/bus/pci/devices/0000:00:04.0"}, {"pci_device_id", 5}}}}},
       "devices[0].pci_device_id: "},
      // 0 names slot 0 and clique 0: asked for as much as any other number.
      {{{"devices", {{{"path", "/sys/bus/pci/devices/0000:00:04.0"}, {"pci_device_id", 0}}}}},
       "devices[0].pci_device_id: "},
      {{{"devices", {{{"path", "/sys/bus/pci/devices/0000:00:04.0"}, {"x_nv_gpudirect_clique", 0}}}}},
       "devices[0].x_nv_gpudirect_clique: "},
      {{{"devices", {{{"id", "gpu"}}}}}, "devices[0].path: missing"},
  };
  for (const auto& [patch, expected] : cases) {
    json body = minimal();
    body.merge_patch(patch);
    std::string message = refusal(body);
    EXPECT_EQ(message.rfind(expected, 0), 0u) << "body " << patch.dump() << "\n  got: " << message;
  }
}

TEST(ApiVmConfig, OffValuesOfUnsupportedFieldsAreAccepted) {
  json body = minimal();
  body.merge_patch(json::parse(R"({
    "disks": [], "net": [], "fs": [], "iommu": false, "watchdog": false, "pvpanic": false,
    "landlock_enable": false, "balloon": null, "vsock": null,
    "memory": {"size": 268435456, "hotplug_size": 0, "zones": [], "shared": true, "mergeable": true},
    "cpus": {"boot_vcpus": 4, "max_vcpus": 4, "topology": {"threads_per_core": 1, "cores_per_die": 4,
             "dies_per_package": 1, "packages": 1}, "kvm_hyperv": false},
    "platform": {"num_pci_segments": 2, "tdx": false, "sev_snp": false},
    "serial": {"mode": "Off"}, "console": {"mode": "Null"}, "rng": {"src": "/dev/urandom", "iommu": false},
    "devices": [{"path": "/sys/bus/pci/devices/0000:00:04.0", "pci_device_id": null, "x_nv_gpudirect_clique": null}]
  })"));
  MachineConfig c = parse_vm_config(body);
  EXPECT_EQ(c.cpus, 4u);
  EXPECT_EQ(c.memory, 256ull << 20);
}

TEST(ApiVmConfig, UnknownFieldsAreIgnored) {
  json body = minimal();
  body["frobnicator"] = {{"level", 11}};
  body["memory"] = {{"size", 1 << 30}, {"future_knob", true}};
  body["payload"]["fw_cfg_config"] = {{"e820", true}};
  EXPECT_EQ(parse_vm_config(body).memory, 1ull << 30);
}

TEST(ApiVmConfig, BadSizesAndCountsAreRefused) {
  auto with = [](const json& patch) {
    json body = minimal();
    body.merge_patch(patch);
    return body;
  };
  EXPECT_EQ(refusal(with({{"memory", {{"size", (256 << 20) + 512}}}})).rfind("memory.size: ", 0), 0u);
  EXPECT_NE(refusal(with({{"memory", {{"size", 8 << 20}}}})).find("at least 16 MiB"), std::string::npos);
  EXPECT_NE(refusal(with({{"memory", {{"size", "1G"}}}})).find("expected a non-negative integer"), std::string::npos);
  EXPECT_EQ(refusal(with({{"memory", {{"size", -4096}}}})).rfind("memory.size: ", 0), 0u);
  EXPECT_EQ(refusal(with({{"memory", {{"size", 1.5e9}}}})).rfind("memory.size: ", 0), 0u);
  EXPECT_EQ(refusal(with({{"memory", {{"hugepages", true}}}})).rfind("memory.size: missing", 0), 0u);
  EXPECT_NE(refusal(with({{"memory", {{"size", (64 << 20) + 4096}, {"hugepages", true}}}})).find("2 MiB"),
            std::string::npos);
  EXPECT_EQ(refusal(with({{"cpus", {{"boot_vcpus", 0}}}})).rfind("cpus.boot_vcpus: 0 is out of range", 0), 0u);
  EXPECT_EQ(refusal(with({{"cpus", {{"boot_vcpus", 65}}}})).rfind("cpus.boot_vcpus: 65 is out of range", 0), 0u);
  EXPECT_EQ(refusal(with({{"cpus", {{"max_vcpus", 2}}}})).rfind("cpus.boot_vcpus: missing", 0), 0u);
  EXPECT_EQ(refusal(with({{"memory", {{"hugepages", "yes"}, {"size", 1 << 30}}}})).rfind("memory.hugepages: ", 0), 0u);
  EXPECT_EQ(refusal(with({{"payload", {{"kernel", 7}}}})).rfind("payload.kernel: expected a string", 0), 0u);
  // A NUL would cut the path where the file is checked and opened: /boot/vmlinuz booted in its place.
  const std::string cut("/boot/vmlinuz\0-test", 19);
  EXPECT_EQ(refusal(with({{"payload", {{"kernel", cut}}}})).rfind("payload.kernel: contains a NUL character", 0), 0u);
  EXPECT_EQ(refusal(with({{"payload", {{"initramfs", cut}}}})).rfind("payload.initramfs: contains a NUL", 0), 0u);
  EXPECT_EQ(refusal(json{{"cpus", {{"boot_vcpus", 1}}}}).rfind("payload.kernel: missing", 0), 0u);
  EXPECT_EQ(refusal(json::array()).rfind("body: expected a VmConfig object", 0), 0u);
  EXPECT_EQ(refusal(with({{"memory", 512}})).rfind("memory: expected an object", 0), 0u);
  // The limits themselves are fine.
  EXPECT_EQ(parse_vm_config(with({{"memory", {{"size", 16 << 20}}}, {"cpus", {{"boot_vcpus", 64}}}})).cpus, 64u);
  EXPECT_TRUE(parse_vm_config(with({{"memory", {{"size", 1 << 30}, {"hugepages", true}, {"hugepage_size", 1 << 30}}}}))
                  .hugepages);
}

TEST(ApiVmConfig, DevicePathsAndAddresses) {
  EXPECT_EQ(host_bdf("/sys/bus/pci/devices/0000:00:04.0/", "p"), "0000:00:04.0");
  EXPECT_EQ(host_bdf("/sys/bus/pci/devices/0000:3b:00.1", "p"), "0000:3b:00.1");  // as Kata sends it
  EXPECT_EQ(host_bdf("/sys/bus/pci/devices/0000:3B:00.1/", "p"), "0000:3b:00.1");
  EXPECT_EQ(host_bdf("0000:00:04.0", "p"), "0000:00:04.0");
  EXPECT_EQ(host_bdf("00:04.0", "p"), "0000:00:04.0");
  EXPECT_EQ(host_bdf("0/4/0", "p"), "0000:00:04.0");  // bhyve's form, as -s takes it
  EXPECT_EQ(sysfs_path("0000:00:04.0"), "/sys/bus/pci/devices/0000:00:04.0/");
  for (const char* bad : {"/sys/bus/pci/devices/00:04.0/", "/sys/bus/pci/devices/", "/dev/vfio/12",
                          "/sys/bus/pci/devices/0000:00:04.0/config", "nvme0", "", "0000:00:20.0"}) {
    try {
      host_bdf(bad, "devices[3].path");
      ADD_FAILURE() << "accepted " << bad;
    } catch (const ControlError& e) {
      EXPECT_EQ(e.kind(), Kind::BadRequest);
      EXPECT_EQ(std::string(e.what()).rfind("devices[3].path: ", 0), 0u) << e.what();
    }
  }
}

TEST(ApiVmConfig, DevicesTakeIdsAndPeerToPeerSetting) {
  json body = minimal();
  body["devices"] = {{{"path", "/sys/bus/pci/devices/0000:00:04.0/"}, {"id", "nvme0"}},
                     {{"path", "0000:00:05.0"}}};
  body["platform"] = {{"vfio_p2p_dma", false}};
  MachineConfig c = parse_vm_config(body);
  ASSERT_EQ(c.slots.size(), 2u);
  EXPECT_EQ(c.slots[1].config, "0000:00:05.0");
  EXPECT_EQ(c.slots[1].id, "");  // the machine names it _vfioN
  EXPECT_FALSE(c.slots[0].p2p);
  EXPECT_FALSE(c.slots[1].p2p);
}

// With no devices at vm.create, the setting is kept for those vm.add-device brings, and vm.info says it.
TEST(ApiVmConfig, PeerToPeerSettingOutlivesAnEmptyDeviceList) {
  json body = minimal();
  body["platform"] = {{"vfio_p2p_dma", false}};
  MachineConfig c = parse_vm_config(body);
  EXPECT_FALSE(c.p2p);
  EXPECT_EQ(vm_config_json(c)["platform"]["vfio_p2p_dma"], false);
  EXPECT_TRUE(parse_vm_config(minimal()).p2p);
}

TEST(ApiVmConfig, DuplicateDevicesAreConflicts) {
  json body = minimal();
  body["devices"] = {{{"path", "0000:00:04.0"}, {"id", "a"}}, {{"path", "0000:00:05.0"}, {"id", "a"}}};
  EXPECT_EQ(refusal(body, Kind::Conflict), "devices[1].id: 'a' is also devices[0]'s id");
  body["devices"] = {{{"path", "/sys/bus/pci/devices/0000:00:04.0/"}}, {{"path", "00:04.0"}}};
  EXPECT_EQ(refusal(body, Kind::Conflict), "devices[1].path: 0000:00:04.0 is also devices[0]");
}

TEST(ApiVmConfig, MoreDevicesThanSlotsAreRefusedBeforeAnyIsLookedAt) {
  json body = minimal();
  body["devices"] = json::array();
  for (int i = 0; i < 32; i++) body["devices"].push_back({{"path", fmt::format("0000:01:{:02x}.0", i)}});
  EXPECT_EQ(refusal(body, Kind::BadRequest), "devices: 32 devices, but a VM has 31 PCI slots");
  body["devices"].erase(31);
  EXPECT_NO_THROW(parse_vm_config(body));
}

TEST(ApiVmConfig, LegacyTopLevelPayload) {
  json body = json::parse(R"({"kernel": {"path": "/k"}, "cmdline": {"args": "quiet"},
                              "initramfs": {"path": "/i"}})");
  MachineConfig c = parse_vm_config(body);
  EXPECT_EQ(c.kernel, "/k");
  EXPECT_EQ(c.cmdline, "quiet");
  EXPECT_EQ(c.initrd, "/i");
  body["payload"] = {{"kernel", "/new"}};  // payload wins
  EXPECT_EQ(parse_vm_config(body).kernel, "/new");
}

TEST(ApiVmConfig, DeviceConfigForAddDevice) {
  DeviceRequest d = parse_device_config({{"path", "/sys/bus/pci/devices/0000:00:04.0"}, {"iommu", false}});
  EXPECT_EQ(d.host, "0000:00:04.0");
  EXPECT_EQ(d.id, "");
  EXPECT_EQ(parse_device_config({{"path", "0000:01:00.0"}, {"id", "gpu"}}).id, "gpu");
  try {
    parse_device_config({{"path", "0000:01:00.0"}, {"iommu", true}});
    ADD_FAILURE();
  } catch (const ControlError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("iommu: ", 0), 0u) << e.what();
  }
  EXPECT_EQ(parse_remove_device({{"id", "gpu"}}), "gpu");
  EXPECT_THROW(parse_remove_device({{"id", ""}}), ControlError);
  EXPECT_THROW(parse_remove_device({{"id", 3}}), ControlError);
  EXPECT_THROW(parse_remove_device(json::array()), ControlError);
}

TEST(ApiVmConfig, InfoConfigRoundTrips) {
  MachineConfig c;
  c.cpus = 3;
  c.memory = 3ull << 30;
  c.hugepages = true;
  c.kernel = "/k";
  c.initrd = "/i";
  c.cmdline = "console=ttyS0";
  c.com1 = "stdio";
  c.nested = false;
  SlotConfig bridge;
  bridge.emulation = "hostbridge";
  SlotConfig nvme;
  nvme.slot = 3;
  nvme.emulation = "passthru";
  nvme.config = "0/4/0";  // as the command line may give it
  nvme.id = "_vfio0";
  c.slots = {bridge, nvme};
  json j = vm_config_json(c);
  EXPECT_EQ(j["devices"], json::parse(R"([{"path": "/sys/bus/pci/devices/0000:00:04.0/", "id": "_vfio0"}])"));
  EXPECT_EQ(j["serial"]["mode"], "Tty");
  EXPECT_EQ(j["console"]["mode"], "Off");
  MachineConfig back = parse_vm_config(j);
  EXPECT_EQ(back.cpus, c.cpus);
  EXPECT_EQ(back.memory, c.memory);
  EXPECT_EQ(back.hugepages, c.hugepages);
  EXPECT_EQ(back.kernel, c.kernel);
  EXPECT_EQ(back.initrd, c.initrd);
  EXPECT_EQ(back.cmdline, c.cmdline);
  EXPECT_EQ(back.com1, c.com1);
  EXPECT_EQ(back.pvpanic, c.pvpanic);
  EXPECT_FALSE(back.nested);
  EXPECT_TRUE(parse_vm_config(minimal()).nested) << "cloud-hypervisor's default";
  ASSERT_EQ(back.slots.size(), 1u);
  EXPECT_EQ(back.slots[0].config, "0000:00:04.0");
  EXPECT_EQ(back.slots[0].id, "_vfio0");

  c.com1.clear();
  c.virtio_console = "stdio";
  c.slots[1].p2p = false;
  j = vm_config_json(c);
  EXPECT_EQ(j["serial"]["mode"], "Null");
  EXPECT_EQ(j["console"]["mode"], "Tty");
  EXPECT_EQ(parse_vm_config(j).virtio_console, "stdio");
  EXPECT_EQ(j["platform"]["vfio_p2p_dma"], false);
  EXPECT_FALSE(parse_vm_config(j).slots[0].p2p);
}

}  // namespace
}  // namespace passvm::api
