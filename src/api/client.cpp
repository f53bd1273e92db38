// api: `passvm remote` (see client.h).
//
// Requests carry what cloud-hypervisor's clients send (a device as its sysfs path, a VmConfig for
// create), so this client and Kata exercise the same server paths.
#include "api/client.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "api/http.h"
#include "api/unix_socket.h"
#include "api/vm_config.h"
#include "cli/options.h"
#include "vmm/control.h"

namespace passvm::api {

namespace {

using nlohmann::json;

// A failure to report on one line, exit status 1.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using Response = http::Response;

// Why connecting fails, for the message: the transport only says that it did.
std::string connect_errno(const std::string& path) {
  int fd = connect_unix(path);
  if (fd < 0) return strerror(errno);
  close(fd);
  return "the connection was dropped";
}

// cloud-hypervisor's error body is a JSON list of messages, outermost first; older servers sent text.
std::string error_message(const Response& r) {
  try {
    json j = json::parse(r.body);
    if (j.is_string()) return j.get<std::string>();
    if (j.is_array() && !j.empty()) {
      std::string out;
      for (const auto& m : j) out += (out.empty() ? "" : ": ") + (m.is_string() ? m.get<std::string>() : m.dump());
      return out;
    }
  } catch (const json::exception&) {
  }
  std::string body = r.body;
  while (!body.empty() && (body.back() == '\n' || body.back() == '\r')) body.pop_back();
  return body.empty() ? fmt::format("the server answered HTTP {}", r.status) : body;
}

Response request(const std::string& socket_path, const std::string& method, const std::string& endpoint,
                 const std::string& body = {}) {
  // A boot pins all guest RAM (minutes for terabytes), as a reboot and a VM's first device do; the rest
  // answer in seconds (remove-device within its eject wait).
  const bool builds = endpoint == "vm.boot" || endpoint == "vm.reboot" || endpoint == "vm.add-device";
  const int wait_s = builds ? 900 : 120;
  http::SendResult res =
      http::module("the API client").send(socket_path, {method, "/api/v1/" + endpoint, body}, 5, wait_s);
  if (!res.sent) {
    if (res.connect_failed)
      throw Failure(fmt::format("cannot connect to {}: {} (is passvm running with --api-socket {}?)", socket_path,
                                connect_errno(socket_path), socket_path));
    if (res.error == "Read")
      throw Failure(fmt::format("{} {}: no answer within {} s; passvm may still be carrying it out (see `passvm "
                                "remote --api-socket {} info`)", method, endpoint, wait_s, socket_path));
    if (res.error == "Write")
      throw Failure(fmt::format("{} {}: the request could not be sent whole (passvm closed the connection)", method,
                                endpoint));
    throw Failure(fmt::format("{} {}: {}", method, endpoint, res.error));
  }
  Response r = res.response;
  if (r.status >= 300) throw Failure(error_message(r));
  return r;
}

std::string size_text(uint64_t bytes) {
  if (bytes % (1ull << 30) == 0) return fmt::format("{} GiB", bytes >> 30);
  if (bytes % (1ull << 20) == 0) return fmt::format("{} MiB", bytes >> 20);
  return fmt::format("{} bytes", bytes);
}

// The host BDF in a device path, or the path itself when it is not one of ours.
std::string host_of(const std::string& path) {
  try {
    return host_bdf(path, "path");
  } catch (const ControlError&) {
    return path;
  }
}

void print_info(const json& info) {
  const json& cfg = info.at("config");
  std::cout << fmt::format("state    {}\n", info.at("state").get<std::string>());
  std::cout << fmt::format("cpus     {}\n", cfg.at("cpus").at("boot_vcpus").get<uint64_t>());
  const json& memory = cfg.at("memory");
  std::cout << fmt::format("memory   {}{}\n", size_text(memory.at("size").get<uint64_t>()),
                           memory.value("hugepages", false) ? " (hugetlbfs pages)" : "");
  const json& payload = cfg.value("payload", json::object());
  for (const auto& [key, label] : {std::pair{"kernel", "kernel "}, {"initramfs", "initrd "}, {"cmdline", "cmdline"}})
    if (payload.contains(key)) std::cout << fmt::format("{}  {}\n", label, payload[key].get<std::string>());
  const json devices = cfg.value("devices", json::array());
  if (devices.empty()) return;
  const json tree = info.value("device_tree", json::object());
  std::cout << "devices\n";
  for (const auto& d : devices) {
    std::string id = d.value("id", "");
    std::string guest = "-";  // not plugged in yet: the VM is not running
    if (tree.contains(id)) guest = tree[id].value("pci_bdf", "-");
    std::cout << fmt::format("  {}  guest {}  host {}\n", id, guest, host_of(d.value("path", "")));
  }
}

void print_counters(const json& counters) {
  for (const auto& [device, values] : counters.items())
    for (const auto& [name, value] : values.items())
      std::cout << fmt::format("{}  {}  {}\n", device, name, value.dump());
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Failure(fmt::format("--config {}: cannot read it: {}", path, strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

struct CreateOptions {
  std::string config_file;
  std::string kernel, initrd, cmdline;
  uint32_t cpus = 1;
  std::string memory = "512M";  // cloud-hypervisor's default
  bool hugepages = false;
  std::string serial = "tty";
  std::string console = "off";
  bool pvpanic = false;
  std::vector<std::string> devices;
};

// The VmConfig `create` sends: what cloud-hypervisor's clients send, built from passvm-style options.
std::string create_body(const CreateOptions& o) {
  if (!o.config_file.empty()) return read_file(o.config_file);
  if (o.kernel.empty()) throw Failure("create needs --kernel FILE (or --config FILE.json)");
  auto size = cli::parse_size(o.memory);
  if (!size)
    throw Failure(fmt::format("--memory {}: not a size; give a number with K, M, G or T, e.g. 512M", o.memory));
  // passvm resolves paths in its own working directory, which need not be ours.
  json payload = {{"kernel", std::filesystem::absolute(o.kernel).string()}};
  if (!o.initrd.empty()) payload["initramfs"] = std::filesystem::absolute(o.initrd).string();
  if (!o.cmdline.empty()) payload["cmdline"] = o.cmdline;
  json body = {{"cpus", {{"boot_vcpus", o.cpus}, {"max_vcpus", o.cpus}}},
               {"memory", {{"size", *size}, {"hugepages", o.hugepages}}},
               {"payload", payload},
               {"serial", {{"mode", o.serial == "tty" ? "Tty" : "Off"}}},
               {"console", {{"mode", o.console == "tty" ? "Tty" : "Off"}}},
               {"pvpanic", o.pvpanic}};
  for (const auto& d : o.devices) {
    try {
      body["devices"].push_back({{"path", sysfs_path(host_bdf(d, "--device"))}});
    } catch (const ControlError& e) {
      throw Failure(e.what());
    }
  }
  return json_text(body);
}

// After a 202 from vm.remove-device: polls vm.info until the device has left the VM.
void wait_for_eject(const std::string& socket_path, const std::string& id, int seconds) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  for (;;) {
    json info = json::parse(request(socket_path, "GET", "vm.info").body);
    const json devices = info.at("config").value("devices", json::array());
    if (std::none_of(devices.begin(), devices.end(), [&](const json& d) { return d.value("id", "") == id; })) return;
    if (std::chrono::steady_clock::now() >= deadline)
      throw Failure(fmt::format("the guest did not eject device '{}' within {} s; it stays in the VM, and goes when "
                                "the guest lets go of it (is the guest's acpiphp hotplug driver there, or is the "
                                "device in use?)",
                                id, seconds));
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
}

}  // namespace

int remote_main(int argc, char** argv) {
  std::string name = argc > 0 && argv[0] ? argv[0] : "passvm remote";
  CLI::App app("Drive a running passvm through its API socket (cloud-hypervisor's REST API)");
  app.name(name);
  app.fallthrough();  // --json and --api-socket may also follow the command
  app.require_subcommand(1);
  std::string socket_path;
  bool json_output = false;
  app.add_option("--api-socket", socket_path, "The socket passvm was started with (--api-socket PATH)")->required();
  app.add_flag("--json", json_output, "Print the server's JSON instead of text");

  struct Simple {
    const char* command;
    const char* method;
    const char* endpoint;
    const char* help;
  };
  const Simple simple[] = {
      {"ping", "GET", "vmm.ping", "Check that passvm answers; print its version and pid"},
      {"info", "GET", "vm.info", "Print the VM's state, configuration and devices"},
      {"boot", "PUT", "vm.boot", "Boot the created VM"},
      {"pause", "PUT", "vm.pause", "Stop the vCPUs (devices stay mapped)"},
      {"resume", "PUT", "vm.resume", "Restart the vCPUs of a paused VM"},
      {"reboot", "PUT", "vm.reboot", "Tear the machine down and boot it again"},
      {"shutdown", "PUT", "vm.shutdown", "Tear the machine down (devices reset and released); the config stays"},
      {"power-button", "PUT", "vm.power-button", "Press the guest's ACPI power button: it may shut down cleanly"},
      {"nmi", "PUT", "vm.nmi", "Send an NMI to every vCPU (a hung guest set up for it panics and dumps)"},
      {"delete", "PUT", "vm.delete", "Shut down if needed and forget the VM"},
      {"counters", "GET", "vm.counters", "Print the device and vCPU counters"},
      {"shutdown-vmm", "PUT", "vmm.shutdown", "Shut the VM down and end the passvm process"},
  };
  for (const auto& s : simple) app.add_subcommand(s.command, s.help);

  std::string device, device_id, remove_id;
  int remove_wait = 30;
  auto* add = app.add_subcommand("add-device", "Pass a host device through to the VM (hot-plugged when running)");
  add->add_option("DEVICE", device, "DDDD:BB:SS.F, or /sys/bus/pci/devices/DDDD:BB:SS.F/")->required();
  add->add_option("--id", device_id, "The id to refer to the device by (default: passvm's _vfioN)");
  auto* remove = app.add_subcommand("remove-device", "Take a device away from the VM (the guest ejects it)");
  remove->add_option("ID", remove_id, "The id add-device or info reported")->required();
  remove->add_option("--wait", remove_wait, "Seconds to wait for the guest to let go (0: return once it is asked)")
      ->check(CLI::Range(0, 3600))
      ->capture_default_str();

  CreateOptions c;
  auto* create = app.add_subcommand("create", "Create the VM (boot it with `boot`)");
  auto* config = create->add_option("--config", c.config_file, "Send this cloud-hypervisor VmConfig JSON file as is");
  std::vector<CLI::Option*> built{
      create->add_option("--kernel", c.kernel, "Linux bzImage"),
      create->add_option("--initrd", c.initrd, "initramfs"),
      create->add_option("--cmdline", c.cmdline, "Kernel command line"),
      create->add_option("--cpus", c.cpus, "vCPUs (1-64)")->check(CLI::Range(1, 64))->capture_default_str(),
      create->add_option("--memory", c.memory, "Guest RAM: K, M, G or T suffix; a bare number is MiB")
          ->capture_default_str(),
      create->add_flag("--hugepages", c.hugepages, "Back guest RAM with hugetlbfs pages"),
      create->add_option("--serial", c.serial, "tty: COM1 on passvm's terminal; off: none")
          ->check(CLI::IsMember({"tty", "off"}))
          ->capture_default_str(),
      create->add_option("--console", c.console, "tty: the virtio console (the guest's hvc0) on passvm's terminal; "
                                                 "off: none")
          ->check(CLI::IsMember({"tty", "off"}))
          ->capture_default_str(),
      create->add_flag("--pvpanic", c.pvpanic, "Give the guest the pvpanic device: its panics are reported on passvm's "
                                               "stderr"),
      create->add_option("--device", c.devices, "A host device to pass through (repeatable)"),
  };
  for (auto* o : built) config->excludes(o);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int status = app.exit(e);  // prints the help or the error
    return status == 0 ? 0 : 2;
  }

  try {
    const CLI::App* chosen = app.get_subcommands().front();
    std::string command = chosen->get_name();
    Response r;
    if (command == "create") {
      r = request(socket_path, "PUT", "vm.create", create_body(c));
    } else if (command == "add-device") {
      json body;
      try {
        body["path"] = sysfs_path(host_bdf(device, "DEVICE"));
      } catch (const ControlError& e) {
        throw Failure(e.what());
      }
      if (!device_id.empty()) body["id"] = device_id;
      r = request(socket_path, "PUT", "vm.add-device", json_text(body));
    } else if (command == "remove-device") {
      r = request(socket_path, "PUT", "vm.remove-device", json_text({{"id", remove_id}}));
      if (r.status == 202) {
        if (remove_wait == 0) {
          std::cout << fmt::format("the guest has been asked to eject '{}'; it leaves the VM when the guest lets go "
                                   "of it (info lists it until then)\n",
                                   remove_id);
          return 0;
        }
        wait_for_eject(socket_path, remove_id, remove_wait);
      }
      return 0;
    } else {
      for (const auto& s : simple)
        if (command == s.command) r = request(socket_path, s.method, s.endpoint);
    }

    if (json_output) {
      if (!r.body.empty()) std::cout << r.body << "\n";
      return 0;
    }
    if (r.body.empty()) {
      if (command == "add-device")
        std::cout << fmt::format("{} joins the VM's config; the guest sees it once the VM boots\n",
                                 host_bdf(device, "DEVICE"));
      return 0;
    }
    json body = json::parse(r.body);
    if (command == "ping") {
      std::cout << fmt::format("{} (version {}, pid {})\n", body.value("build_version", "?"),
                               body.value("version", "?"), body.value("pid", int64_t{0}));
    } else if (command == "info") {
      print_info(body);
    } else if (command == "counters") {
      print_counters(body);
    } else if (command == "add-device") {
      std::cout << fmt::format("{}  guest {}  host {}\n", body.value("id", "?"), body.value("bdf", "?"),
                               host_bdf(device, "DEVICE"));
    } else {
      std::cout << r.body << "\n";
    }
    return 0;
  } catch (const Failure& e) {
    std::cerr << fmt::format("{}: {}\n", name, e.what());
  } catch (const json::exception& e) {
    std::cerr << fmt::format("{}: the server's answer is not what passvm sends: {}\n", name, e.what());
  } catch (const std::exception& e) {
    std::cerr << fmt::format("{}: {}\n", name, e.what());
  }
  return 1;
}

}  // namespace passvm::api
