// `passvm remote` in-process against a server over a fake machine: what each command sends, prints
// and exits with.
#include "api/client.h"

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "api/api_test_util.h"

namespace passvm::testing {
namespace {

using nlohmann::json;

class ApiRemote : public ServerFixture {
 protected:
  // passvm remote --api-socket SOCKET ARGS...
  int run(std::vector<std::string> args, const std::string& socket = {}) {
    args.insert(args.begin(), {"passvm remote", "--api-socket", socket.empty() ? socket_path : socket});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    int status = api::remote_main(static_cast<int>(argv.size()), argv.data());
    out = ::testing::internal::GetCapturedStdout();
    err = ::testing::internal::GetCapturedStderr();
    return status;
  }
  std::string out, err;
};

TEST_F(ApiRemote, Ping) {
  ASSERT_EQ(run({"ping"}), 0) << err;
  EXPECT_EQ(out, fmt::format("passvm v0.1.0 (version 0.1.0, pid {})\n", getpid()));
  ASSERT_EQ(run({"--json", "ping"}), 0) << err;
  EXPECT_EQ(json::parse(out)["pid"], getpid());
  ASSERT_EQ(run({"ping", "--json"}), 0) << err;  // global options may follow the command
  EXPECT_EQ(json::parse(out)["version"], "0.1.0");
}

TEST_F(ApiRemote, CreateFromOptions) {
  ASSERT_EQ(run({"create", "--kernel", "/boot/vmlinuz", "--initrd", "initrd.img", "--cmdline", "console=ttyS0",
                 "--cpus", "2", "--memory", "1G", "--device", "0000:00:04.0", "--device", "0/5/0"}),
            0)
      << err;
  EXPECT_EQ(out, "");
  MachineConfig c = control.config();
  EXPECT_EQ(c.kernel, "/boot/vmlinuz");
  EXPECT_EQ(c.initrd, (std::filesystem::current_path() / "initrd.img").string());  // passvm's cwd may differ
  EXPECT_EQ(c.cmdline, "console=ttyS0");
  EXPECT_EQ(c.cpus, 2u);
  EXPECT_EQ(c.memory, 1ull << 30);
  EXPECT_EQ(c.com1, "stdio");
  ASSERT_EQ(c.slots.size(), 2u);
  EXPECT_EQ(c.slots[0].config, "0000:00:04.0");
  EXPECT_EQ(c.slots[1].config, "0000:00:05.0");
}

TEST_F(ApiRemote, CreateDefaultsAndSerialOff) {
  ASSERT_EQ(run({"create", "--kernel", "/k", "--memory", "768", "--serial", "off"}), 0) << err;
  EXPECT_EQ(control.config().memory, 768ull << 20);  // a bare number is MiB, as with passvm -m
  EXPECT_EQ(control.config().cpus, 1u);
  EXPECT_EQ(control.config().com1, "");
  EXPECT_EQ(control.config().virtio_console, "");
  EXPECT_FALSE(control.config().pvpanic);
}

TEST_F(ApiRemote, CreateWithPvpanic) {
  ASSERT_EQ(run({"create", "--kernel", "/k", "--pvpanic"}), 0) << err;
  EXPECT_TRUE(control.config().pvpanic);
}

TEST_F(ApiRemote, CreateWithTheVirtioConsole) {
  ASSERT_EQ(run({"create", "--kernel", "/k", "--console", "tty", "--cmdline", "console=hvc0"}), 0) << err;
  EXPECT_EQ(control.config().virtio_console, "stdio");
  EXPECT_EQ(control.config().com1, "stdio");  // --serial's default
}

TEST_F(ApiRemote, CreateFromAConfigFileSentAsIs) {
  std::string file = dir / "vm.json";
  std::ofstream(file) << R"({"payload": {"kernel": "/k"}, "memory": {"size": 268435456}, "vsock": null})";
  ASSERT_EQ(run({"create", "--config", file}), 0) << err;
  EXPECT_EQ(control.config().memory, 256ull << 20);
  EXPECT_EQ(run({"create", "--config", file, "--kernel", "/k"}), 2);  // one or the other
  EXPECT_NE(err.find("excludes"), std::string::npos) << err;
  EXPECT_EQ(run({"create", "--config", dir / "missing.json"}), 1);
  EXPECT_EQ(err.rfind(fmt::format("passvm remote: --config {}: cannot read it", dir / "missing.json"), 0), 0u) << err;
}

TEST_F(ApiRemote, CreateErrorsComeFromTheServer) {
  std::string file = dir / "vm.json";
  std::ofstream(file) << R"({"payload": {"kernel": "/k"}, "vsock": {"cid": 3, "socket": "/s"}})";
  EXPECT_EQ(run({"create", "--config", file}), 1);
  EXPECT_EQ(err, "passvm remote: vsock: passvm has no virtio devices; pass a device through with devices[] instead\n");
  EXPECT_EQ(out, "");
  EXPECT_EQ(run({"create"}), 1);
  EXPECT_EQ(err, "passvm remote: create needs --kernel FILE (or --config FILE.json)\n");
  EXPECT_EQ(run({"create", "--kernel", "/k", "--memory", "lots"}), 1);
  EXPECT_NE(err.find("--memory lots: not a size"), std::string::npos) << err;
  EXPECT_EQ(run({"create", "--kernel", "/k", "--device", "nvme0"}), 1);
  EXPECT_EQ(err.rfind("passvm remote: --device: 'nvme0' does not name a PCI device", 0), 0u) << err;
  EXPECT_TRUE(control.calls().empty());
}

TEST_F(ApiRemote, InfoShowsStateAndDevices) {
  boot_with_device();
  ASSERT_EQ(run({"add-device", "/sys/bus/pci/devices/0000:00:05.0/", "--id", "nic0"}), 0) << err;
  EXPECT_EQ(out, "nic0  guest 0000:00:04.0  host 0000:00:05.0\n");
  ASSERT_EQ(run({"info"}), 0) << err;
  EXPECT_EQ(out,
            "state    Running\n"
            "cpus     1\n"
            "memory   512 MiB\n"
            "kernel   /k\n"
            "devices\n"
            "  nvme0  guest 0000:00:03.0  host 0000:00:04.0\n"
            "  nic0  guest 0000:00:04.0  host 0000:00:05.0\n");
  ASSERT_EQ(run({"--json", "info"}), 0) << err;
  json info = json::parse(out);
  EXPECT_EQ(info["state"], "Running");
  EXPECT_EQ(info["device_tree"]["nic0"]["pci_bdf"], "0000:00:04.0");
}

TEST_F(ApiRemote, DevicesAddedBeforeBootHaveNoGuestAddress) {
  ASSERT_EQ(run({"create", "--kernel", "/k"}), 0) << err;
  ASSERT_EQ(run({"add-device", "00:04.0"}), 0) << err;
  EXPECT_EQ(out, "0000:00:04.0 joins the VM's config; the guest sees it once the VM boots\n");
  EXPECT_EQ(control.calls().back(), "add_device 0000:00:04.0 ");
  ASSERT_EQ(run({"info"}), 0) << err;
  EXPECT_NE(out.find("  _vfio0  guest -  host 0000:00:04.0\n"), std::string::npos) << out;
  EXPECT_NE(out.find("state    Created\n"), std::string::npos) << out;
}

TEST_F(ApiRemote, ActionsAndTheirErrors) {
  ASSERT_EQ(run({"create", "--kernel", "/k"}), 0) << err;
  for (const char* command : {"boot", "pause", "nmi", "resume", "reboot", "power-button", "nmi", "shutdown", "boot"}) {
    EXPECT_EQ(run({command}), 0) << command << ": " << err;
    EXPECT_EQ(out, "") << command;
  }
  EXPECT_EQ(run({"resume"}), 1);
  EXPECT_EQ(err, "passvm remote: the VM is not paused\n");
  EXPECT_EQ(run({"remove-device", "gpu"}), 1);
  EXPECT_EQ(err, "passvm remote: no device 'gpu' in this VM\n");
  ASSERT_EQ(run({"add-device", "0000:00:06.0", "--id", "gpu"}), 0) << err;
  ASSERT_EQ(run({"remove-device", "gpu"}), 0) << err;
  EXPECT_EQ(control.calls().back(), "remove_device gpu");
  ASSERT_EQ(run({"counters"}), 0) << err;
  EXPECT_EQ(out, "nvme0  bar_reads  3\nvcpu0  exits  42\nvcpu0  io_exits  7\n");
  ASSERT_EQ(run({"delete"}), 0) << err;
  EXPECT_EQ(control.state(), VmState::NotCreated);
  ASSERT_EQ(run({"shutdown-vmm"}), 0) << err;
  EXPECT_TRUE(control.vmm_shutdown_requested());
}

// vm.remove-device answered 202: the client waits for the device to leave vm.info, or says it did not.
TEST_F(ApiRemote, RemoveDeviceWaitsForASlowEject) {
  ASSERT_EQ(run({"create", "--kernel", "/k"}), 0) << err;
  ASSERT_EQ(run({"boot"}), 0) << err;
  ASSERT_EQ(run({"add-device", "0000:00:06.0"}), 0) << err;
  control.eject_after_polls(3);
  ASSERT_EQ(run({"remove-device", "_vfio0"}), 0) << err;
  EXPECT_EQ(out, "");
  EXPECT_TRUE(control.config().slots.empty());
  auto calls = control.calls();
  EXPECT_EQ(std::count(calls.begin(), calls.end(), "remove_device _vfio0"), 1);
}

TEST_F(ApiRemote, RemoveDeviceTheGuestKeeps) {
  ASSERT_EQ(run({"create", "--kernel", "/k"}), 0) << err;
  ASSERT_EQ(run({"boot"}), 0) << err;
  ASSERT_EQ(run({"add-device", "0000:00:06.0"}), 0) << err;
  control.eject_after_polls(-1);
  EXPECT_EQ(run({"remove-device", "_vfio0", "--wait", "1"}), 1);
  EXPECT_EQ(err,
            "passvm remote: the guest did not eject device '_vfio0' within 1 s; it stays in the VM, and goes when the "
            "guest lets go of it (is the guest's acpiphp hotplug driver there, or is the device in use?)\n");
  ASSERT_EQ(run({"remove-device", "_vfio0", "--wait", "0"}), 0) << err;
  EXPECT_EQ(out,
            "the guest has been asked to eject '_vfio0'; it leaves the VM when the guest lets go of it (info lists it "
            "until then)\n");
  EXPECT_EQ(control.config().slots.size(), 1u);
}

TEST_F(ApiRemote, CannotConnect) {
  std::string nowhere = dir / "nobody.sock";
  EXPECT_EQ(run({"ping"}, nowhere), 1);
  EXPECT_EQ(err, fmt::format("passvm remote: cannot connect to {0}: No such file or directory (is passvm running "
                             "with --api-socket {0}?)\n",
                             nowhere));
  server->stop();
  EXPECT_EQ(run({"info"}), 1);
  EXPECT_NE(err.find("cannot connect to " + socket_path), std::string::npos) << err;
}

TEST_F(ApiRemote, UsageErrors) {
  EXPECT_EQ(run({}), 2);  // no command
  EXPECT_EQ(run({"frobnicate"}), 2);
  EXPECT_EQ(run({"add-device"}), 2);  // no DEVICE
  EXPECT_EQ(run({"create", "--kernel", "/k", "--cpus", "65"}), 2);
  std::vector<std::string> bare{"passvm remote", "ping"};  // no --api-socket
  std::vector<char*> argv;
  for (auto& a : bare) argv.push_back(a.data());
  ::testing::internal::CaptureStderr();
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(api::remote_main(2, argv.data()), 2);
  std::string e = ::testing::internal::GetCapturedStderr();
  ::testing::internal::GetCapturedStdout();
  EXPECT_NE(e.find("--api-socket"), std::string::npos) << e;
  EXPECT_TRUE(control.calls().empty());
}

}  // namespace
}  // namespace passvm::testing
