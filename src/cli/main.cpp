// passvm's entry point: host tooling subcommands, the API client, or a VM (with or without an API).
#include <fmt/format.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/eprint.h"
#include "api/client.h"
#include "api/server.h"
#include "cli/cache_command.h"
#include "cli/options.h"
#include "confine/privileges.h"
#include "confine/seccomp.h"
#include "devices/console_output.h"
#include "host/host_cli.h"
#include "host/preflight.h"
#include "vmm/vmm.h"

namespace {

// argv[1..] as a subcommand's own argv, named "passvm SUB".
int run_subcommand(int argc, char** argv, int (*fn)(int, char**)) {
  std::string name = std::string("passvm ") + argv[1];
  std::vector<char*> sub(argv + 1, argv + argc);
  sub[0] = name.data();
  return fn(static_cast<int>(sub.size()), sub.data());
}

// A closed 0, 1 or 2 is the number the next open() gets (/dev/kvm, a device, guest RAM's memfd), and the
// guest's console or a message would then be written into that: each closed one is taken by /dev/null.
void take_closed_standard_fds() {
  for (int fd = 0; fd <= 2; ++fd)
    if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) open("/dev/null", O_RDWR);  // the lowest free number: fd
}

// Whether `user` can open /dev/kvm, the VFIO container and the group files of the command line's
// devices, tried as the user (ACLs count); when not, says what they lack and the fix, and returns false.
bool user_can_open_later(const passvm::cli::ParseResult& parsed, const passvm::confine::UserIds& user) {
  namespace host = passvm::host;
  std::vector<host::PciAddress> devices;
  if (parsed.config)
    for (const auto& s : parsed.config->slots)
      if (s.emulation == "passthru") devices.push_back(host::PciAddress::parse(s.config));
  std::vector<std::string> paths = {"/dev/kvm"};
  if (!devices.empty() || access("/dev/vfio/vfio", F_OK) == 0) paths.push_back("/dev/vfio/vfio");
  for (const auto& d : devices) {
    std::error_code ec;
    auto group = std::filesystem::read_symlink("/sys/bus/pci/devices/" + d.str() + "/iommu_group", ec);
    if (ec) continue;  // no group: building the VM says so, with its fix
    paths.push_back("/dev/vfio/" + group.filename().string());
  }
  auto cannot = passvm::confine::unopenable_as(user, paths);
  if (cannot.empty()) return true;
  // The preflight's judgement from owner, group and mode names the fix where it sees the problem too.
  auto lines = host::access_after_drop(host::Sysroot::from_environment(), user, devices);
  passvm::eprint("passvm: --user {} with --api-socket: VMs booted later (vm.boot, the guest's reboot, "
                 "vm.add-device) open their devices as {}, who cannot open:\n", user.name, user.name);
  for (const auto& [path, err] : cannot) {
    auto line = std::find_if(lines.begin(), lines.end(), [&](const host::CheckLine& l) {
      return l.detail.find(path) != std::string::npos;
    });
    if (line != lines.end())
      passvm::eprint("  {}; fix: {}\n", line->detail, line->fix);
    else
      passvm::eprint("  {}: {}\n", path, std::strerror(err));
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  take_closed_standard_fds();
  if (argc > 1 && passvm::host::is_host_command(argv[1])) return run_subcommand(argc, argv, passvm::host::host_main);
  if (argc > 1 && std::string(argv[1]) == "remote") return run_subcommand(argc, argv, passvm::api::remote_main);
  if (argc > 1 && std::string(argv[1]) == "cache") return run_subcommand(argc, argv, passvm::cli::cache_main);
  auto parsed = passvm::cli::parse_command_line(std::vector<std::string>(argv + 1, argv + argc));
  if (!parsed.run) {
    std::fputs(parsed.message.c_str(), parsed.exit_status == 0 ? stdout : stderr);
    if (!parsed.message.empty() && parsed.message.back() != '\n') std::fputc('\n', parsed.exit_status == 0 ? stdout : stderr);
    return parsed.exit_status;
  }
  // The guest's console writes to stdout and passvm's messages go to stderr, often one terminal: a message
  // then starts on a line of its own, not after the guest's half-written one. Neither may block passvm when
  // its reader stalls: from here they are queued, and written by a thread of their own once it starts.
  signal(SIGPIPE, SIG_IGN);  // a reader gone is a write error (EPIPE), handled where written, not the end
  passvm::devices::route_standard_streams();
  try {
    namespace confine = passvm::confine;
    std::optional<confine::UserIds> user;
    std::optional<confine::DropTarget> drop;
    if (!parsed.user.empty()) {
      if (geteuid() != 0) {
        passvm::eprint("passvm: --user {}: passvm already runs as an unprivileged user; --user is for starting "
                           "it as root (leave --user out)\n", parsed.user);
        return 1;
      }
      user = confine::resolve_user(parsed.user);
      drop = confine::DropTarget{user->uid, user->gid, static_cast<uint32_t>(user->groups.size())};
    }
    // With the API, later VMs may be larger than the first (or there is none yet): the limit VFIO pins
    // guest RAM against is lifted altogether before root is given up.
    uint64_t memlock = parsed.config && parsed.api_socket.empty() ? confine::memlock_for_guest(parsed.config->memory)
                                                                   : UINT64_MAX;
    // Before any thread starts: every thread confines itself at its start with what this prepares.
    confine::configure(parsed.seccomp, drop);
    // The Vmm next: it blocks the signals it watches, and every thread started later inherits that.
    passvm::Vmm vmm(!parsed.api_socket.empty());
    passvm::devices::start_standard_streams([] { confine::enter(confine::ThreadClass::Console, "pv-output"); });
    vmm.set_api_defaults(parsed.config ? *parsed.config : parsed.api_defaults);
    std::unique_ptr<passvm::api::Server> server;
    vmm.set_confinement([&user, memlock, &server] {
      if (user) confine::drop_to(*user, memlock);
      confine::enter(confine::ThreadClass::Control);
      if (server) server->serve();
    });
    // With the API, every VM after the first (vm.boot, the guest's reboot, vm.add-device) is built once
    // root is given up: the user must be able to open what it opens, or the VM dies at its first reboot.
    if (user && !parsed.api_socket.empty() && !user_can_open_later(parsed, *user)) return 1;
    if (!parsed.api_socket.empty()) {
      // Requests are untrusted input: with --user none is read while passvm is still root (until the
      // first VM is built, or at once when there is none); clients wait in the socket's backlog.
      using Start = passvm::api::Server::Start;
      // A refused request is said on stderr too, where an orchestrator's log keeps it; with -v every one.
      const bool verbose = parsed.config ? parsed.config->verbose : parsed.api_defaults.verbose;
      auto log = [verbose](int status, std::string_view line) {
        if (status >= 400 || verbose) passvm::eprint("passvm: API {}\n", line);
      };
      server = std::make_unique<passvm::api::Server>(vmm, parsed.api_socket, log, user ? Start::on_serve : Start::now);
      // The user passvm becomes can reach its own socket (root always can).
      if (user) server->give_to(user->uid, user->gid);
    }
    int status = vmm.run(parsed.config);
    server.reset();  // after run(): a vmm.shutdown request gets its reply before the socket goes
    return status;
  } catch (const std::exception& e) {
    passvm::eprint("passvm: {}\n", e.what());
    return 1;
  }
}
