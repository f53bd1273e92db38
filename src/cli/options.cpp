#include "cli/options.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <stdexcept>

namespace passvm::cli {

std::optional<uint64_t> parse_size(const std::string& text) {
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) return std::nullopt;
  size_t pos = 0;
  uint64_t value = 0;
  try {
    value = std::stoull(text, &pos, 10);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::string suffix = text.substr(pos);
  if (suffix.size() == 3 && suffix.substr(1) == "iB") suffix.resize(1);
  if (suffix.size() == 2 && (suffix[1] == 'B' || suffix[1] == 'b')) suffix.resize(1);
  unsigned shift = 20;  // a bare number is MiB, as in bhyve
  if (suffix.empty()) {
  } else if (suffix.size() == 1) {
    switch (std::toupper(static_cast<unsigned char>(suffix[0]))) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      default: return std::nullopt;
    }
  } else {
    return std::nullopt;
  }
  if (value > (std::numeric_limits<uint64_t>::max() >> shift)) return std::nullopt;
  return value << shift;
}

static uint32_t parse_number(const std::string& text, uint32_t max, const char* what, const std::string& whole) {
  if (text.empty() || !std::all_of(text.begin(), text.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }) ||
      text.size() > 3 || std::stoul(text) > max)
    throw std::invalid_argument(
        fmt::format("-s {}: {} '{}' must be a number from 0 to {}", whole, what, text, max));
  return static_cast<uint32_t>(std::stoul(text));
}

SlotConfig parse_slot(const std::string& text) {
  SlotConfig s;
  const auto c1 = text.find(',');
  if (c1 == std::string::npos)
    throw std::invalid_argument(fmt::format(
        "-s {}: expected SLOT[:FUNC],EMULATION[,CONFIG], e.g. -s 3,passthru,0000:03:00.0", text));
  std::string where = text.substr(0, c1);
  std::string rest = text.substr(c1 + 1);
  const auto c2 = rest.find(',');
  s.emulation = rest.substr(0, c2);
  if (c2 != std::string::npos) s.config = rest.substr(c2 + 1);

  // bhyve accepts SLOT, SLOT:FUNC and BUS:SLOT:FUNC; passvm has one bus.
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= where.size(); i++) {
    if (i == where.size() || where[i] == ':') {
      parts.push_back(where.substr(start, i - start));
      start = i + 1;
    }
  }
  if (parts.size() == 3) {
    if (parse_number(parts[0], 255, "bus", text) != 0)
      throw std::invalid_argument(fmt::format("-s {}: passvm has a single PCI bus: use bus 0 or give SLOT[:FUNC]", text));
    parts.erase(parts.begin());
  }
  if (parts.empty() || parts.size() > 2)
    throw std::invalid_argument(fmt::format("-s {}: slot must be SLOT or SLOT:FUNC, e.g. 3 or 3:0", text));
  s.slot = parse_number(parts[0], 31, "slot", text);
  if (parts.size() == 2) s.func = parse_number(parts[1], 7, "function", text);

  if (s.emulation == "hostbridge" || s.emulation == "lpc") {
    if (!s.config.empty())
      throw std::invalid_argument(fmt::format("-s {}: {} takes no configuration", text, s.emulation));
  } else if (s.emulation == "passthru") {
    // DEVICE[,rom=FILE][,p2p=on|off]
    std::string options;
    if (auto c = s.config.find(','); c != std::string::npos) {
      options = s.config.substr(c + 1);
      s.config.resize(c);
    }
    if (s.config.empty())
      throw std::invalid_argument(fmt::format(
          "-s {}: passthru needs the host device, as B/S/F or DDDD:BB:SS.F, e.g. -s {},passthru,0000:03:00.0", text,
          where));
    for (size_t at = 0; at < options.size();) {
      size_t end = std::min(options.find(',', at), options.size());
      std::string opt = options.substr(at, end - at);
      if (opt.rfind("rom=", 0) == 0 && opt.size() > 4)
        s.rom = opt.substr(4);
      else if (opt == "p2p=on" || opt == "p2p=off")
        s.p2p = opt == "p2p=on";
      else
        throw std::invalid_argument(fmt::format("-s {}: unknown passthru option '{}': passthru options are "
                                                "rom=FILE (the expansion ROM the guest sees) and p2p=on|off (other "
                                                "devices may DMA into this one's BARs; on by default)",
                                                text, opt));
      at = end + 1;
    }
  } else {
    throw std::invalid_argument(fmt::format(
        "-s {}: unknown emulation '{}': passvm provides hostbridge, passthru and lpc", text, s.emulation));
  }
  return s;
}

ParseResult parse_command_line(const std::vector<std::string>& args) {
  MachineConfig cfg;
  CLI::App app{
      "passvm: a virtual machine monitor for Linux/KVM built around PCI device passthrough.\n\n"
      "Host device reservation: passvm list | reserve DEVICE... | release DEVICE... | check  (passvm list --help)\n",
      "passvm"};
  app.get_formatter()->column_width(34);
  std::string memory = "256M";
  std::vector<std::string> slots;
  std::vector<std::string> lpc;
  bool version = false;
  app.add_option("-c,--cpus", cfg.cpus, "Number of vCPUs (1-64)")->check(CLI::Range(1, 64));
  app.add_option("-m,--memory", memory, "Guest RAM, with suffix K, M, G or T (a bare number is MiB)")
      ->capture_default_str();
  app.add_option("-s,--slot", slots,
                 "PCI slot: SLOT[:FUNC],EMULATION[,CONFIG]; EMULATION is hostbridge, lpc or passthru "
                 "(CONFIG = host device, B/S/F or DDDD:BB:SS.F)")
      ->take_all()
      ->allow_extra_args(false);
  app.add_option("-l,--lpc", lpc,
                 "Console: com1,stdio (the guest's ttyS0 on this terminal) or virtio-console,stdio (its hvc0)")
      ->allow_extra_args(false);
  app.add_flag("-S,--hugepages", cfg.hugepages, "Back guest RAM with the host's reserved hugetlbfs pages (1 GiB ones when the size allows and the pool has them, else 2 MiB); without it, transparent huge pages");
  app.add_option("--kernel,-k", cfg.kernel, "Linux bzImage to boot (required unless --api-socket)");
  std::string api_socket;
  app.add_option("--api-socket", api_socket,
                 "Serve cloud-hypervisor's REST API (HTTP over this unix socket): the VM is then created, booted, "
                 "paused and given devices by requests, and passvm stays until vmm.shutdown");
  std::string seccomp = "on";
  app.add_option("--seccomp", seccomp,
                 "System-call filters for each passvm thread, installed before the guest runs: on (a forbidden call "
                 "stops passvm, naming it), log (the kernel logs forbidden calls and lets them through), off; true and "
                 "false as cloud-hypervisor's --seccomp takes them")
      ->capture_default_str();
  std::string user;
  app.add_option("--user", user,
                 "Started as root: open /dev/kvm, the devices and the guest's files, then run as this user with no "
                 "capabilities (RLIMIT_MEMLOCK is raised first so guest RAM can be pinned for DMA)");
  app.add_option("--initrd,-i", cfg.initrd, "Initramfs to load");
  app.add_option("--append,-a", cfg.cmdline, "Kernel command line");
  app.add_flag("!--no-pvpanic", cfg.pvpanic,
               "Leave out the pvpanic device (QEMU's, at port 0x505), through which a guest kernel's panic stops the "
               "VM with exit status 7");
  app.add_flag("--stats", cfg.stats, "Print device and vCPU counters at exit (also on SIGUSR2)");
  app.add_flag("-v,--verbose", cfg.verbose, "Say what is being set up, with timings, on stderr");
  bool guest_decompress = false;
  app.add_flag("--guest-decompress", guest_decompress,
               "Let the guest unpack the bzImage itself (default: passvm unpacks xz/gzip kernels, faster)");
  app.add_flag("-V,--version", version, "Print the version and exit");
  app.add_option("vmname", cfg.name, "Name of the VM (for messages)");

  std::vector<std::string> reversed(args.rbegin(), args.rend());
  ParseResult result;
  try {
    // --version must work without --kernel.
    if (std::find(args.begin(), args.end(), "--version") != args.end() ||
        std::find(args.begin(), args.end(), "-V") != args.end()) {
      result.message = "passvm 0.1.0\n";
      return result;
    }
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    result.message = app.help();
    return result;
  } catch (const CLI::ParseError& e) {
    result.message = fmt::format("passvm: {} (see passvm --help)", e.what());
    result.exit_status = 1;
    return result;
  }

  auto fail = [&](std::string msg) {
    result.message = "passvm: " + msg;
    result.exit_status = 1;
    return result;
  };
  result.api_socket = api_socket;
  auto mode = confine::parse_mode(seccomp);
  if (!mode) return fail(fmt::format("--seccomp {}: give on, log or off", seccomp));
  result.seccomp = *mode;
  result.user = user;
  if (cfg.kernel.empty()) {
    if (api_socket.empty())
      return fail("--kernel is required: give the guest kernel with --kernel BZIMAGE, or serve the API with "
                  "--api-socket PATH and create the VM through it (see passvm --help)");
    for (const char* opt : {"--slot", "--lpc", "--initrd", "--append", "--memory", "--cpus", "--hugepages", "--no-pvpanic"})
      if (app.count(opt) > 0)
        return fail(fmt::format("{} describes a VM, but no --kernel was given: give --kernel too, or leave the VM to "
                                "vm.create on the API socket", opt));
    cfg.unpack_on_host = !guest_decompress;
    result.api_defaults = cfg;
    result.run = true;
    return result;
  }
  auto size = parse_size(memory);
  if (!size) return fail(fmt::format("-m {}: not a size; give a number with K, M, G or T, e.g. -m 512M", memory));
  if (*size < (16ull << 20)) return fail(fmt::format("-m {}: a guest needs at least 16M", memory));
  if (*size % 4096 != 0) return fail(fmt::format("-m {}: guest RAM must be a whole number of 4 KiB pages", memory));
  if (cfg.hugepages && *size % (2ull << 20) != 0)
    return fail(fmt::format("-m {}: with --hugepages, guest RAM must be a multiple of 2M", memory));
  cfg.memory = *size;

  try {
    for (const auto& text : slots) {
      SlotConfig s = parse_slot(text);
      for (const auto& other : cfg.slots)
        if (other.slot == s.slot && other.func == s.func)
          return fail(fmt::format("-s {}: slot {}:{} is already used by {}", text, s.slot, s.func, other.emulation));
      cfg.slots.push_back(s);
    }
  } catch (const std::invalid_argument& e) {
    return fail(e.what());
  }
  bool has_bridge = false;
  for (const auto& s : cfg.slots) has_bridge |= s.emulation == "hostbridge";
  if (has_bridge) {
    for (const auto& s : cfg.slots)
      if (s.emulation == "hostbridge" && (s.slot != 0 || s.func != 0))
        return fail(fmt::format("-s {}:{},hostbridge: the host bridge lives at slot 0: -s 0,hostbridge", s.slot, s.func));
  } else {
    for (const auto& s : cfg.slots)
      if (s.slot == 0 && s.func == 0)
        return fail("slot 0 is the host bridge's: add -s 0,hostbridge and move the device to another slot");
  }

  for (const auto& dev : lpc) {
    if (dev == "com1,stdio") {
      cfg.com1 = "stdio";
    } else if (dev == "virtio-console,stdio") {
      cfg.virtio_console = "stdio";
    } else {
      return fail(fmt::format("-l {}: passvm provides com1,stdio (the guest's ttyS0 on this terminal) and "
                              "virtio-console,stdio (its hvc0)", dev));
    }
  }
  cfg.unpack_on_host = !guest_decompress;
  result.config = cfg;
  result.run = true;
  return result;
}

}  // namespace passvm::cli
