// api: the REST server (see server.h for the lifetime and the vmm.shutdown contract).
//
// The statuses are cloud-hypervisor's, read from its source (vmm/src/api/http/mod.rs and
// http_endpoint.rs), which is what its clients are written against:
//   - an unknown path is 404; a known path with the wrong method is 400, not 405;
//   - a body that is not JSON or not the schema is 400; a body on an action that takes none is 400;
//   - an action failing is 500, except "the VM is not created" for boot, reboot, info, add-device and
//     remove-device (404), an unknown device id (404) and a duplicate device id or path (409);
//   - the error body is a JSON list of messages, outermost first.
// One answer is passvm's: vm.remove-device is 204 once the guest has ejected the device, and 202 when
// it has been asked and not let go within a few seconds (cloud-hypervisor answers 204 on asking).
// The transport (http.h) never decides a status here: every method and path reaches dispatch(), which
// catches everything, so no request can take the server down.
#include "api/server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "api/http.h"
#include "api/unix_socket.h"
#include "api/vm_config.h"
#include "confine/seccomp.h"

#ifndef PASSVM_VERSION
#define PASSVM_VERSION "unknown"
#endif

namespace passvm::api {

namespace {

using nlohmann::json;
using Kind = ControlError::Kind;

constexpr std::string_view kRoot = "/api/v1/";
constexpr size_t kMaxBody = 4 << 20;  // cloud-hypervisor's HTTP_PAYLOAD_MAX_SIZE
constexpr int kMaxBodyDepth = 64;

using Reply = http::Response;

Reply error_reply(int status, const std::string& message) { return {status, json_text(json::array({message}))}; }

// How an endpoint is called and answered.
struct Endpoint {
  enum class Body { None, Required, Ignored };
  std::string_view method;  // "GET" or "PUT"
  Body body;
  bool absent_vm_is_404;  // cloud-hypervisor answers 404 when there is no VM to act on
  Reply (*handle)(VmControl&, const json& body);
};

Reply no_content() { return {204, {}}; }
Reply ok(const json& body) { return {200, json_text(body)}; }

// The body-less actions: 204 when done.
template <void (VmControl::*Action)()>
Reply action(VmControl& control, const json&) {
  (control.*Action)();
  return no_content();
}

json info_json(const VmInfo& info) {
  json out = {{"config", vm_config_json(info.config)},
              {"state", state_name(info.state)},
              {"memory_actual_size", info.config.memory}};
  // cloud-hypervisor has a device tree only while the machine exists (booted, running or paused).
  if (info.state == VmState::Running || info.state == VmState::Paused) {
    json tree = json::object();
    for (const auto& d : info.devices)
      tree[d.id] = {{"id", d.id}, {"resources", json::array()}, {"children", json::array()}, {"pci_bdf", d.bdf}};
    out["device_tree"] = tree;
  }
  return out;
}

const std::map<std::string_view, Endpoint>& endpoints() {
  using B = Endpoint::Body;
  static const std::map<std::string_view, Endpoint> table{
      {"vmm.ping",
       {"GET", B::Ignored, false,
        [](VmControl&, const json&) {
          return ok({{"build_version", "passvm v" PASSVM_VERSION},
                     {"version", PASSVM_VERSION},
                     {"pid", static_cast<int64_t>(getpid())},
                     {"features", json::array()}});
        }}},
      {"vmm.shutdown", {"PUT", B::None, false, action<&VmControl::shutdown_vmm>}},
      {"vm.create",
       {"PUT", B::Required, false,
        [](VmControl& c, const json& body) {
          c.create(parse_vm_config(body));
          return no_content();
        }}},
      {"vm.boot", {"PUT", B::None, true, action<&VmControl::boot>}},
      {"vm.pause", {"PUT", B::None, false, action<&VmControl::pause>}},
      {"vm.resume", {"PUT", B::None, false, action<&VmControl::resume>}},
      {"vm.reboot", {"PUT", B::None, true, action<&VmControl::reboot>}},
      {"vm.shutdown", {"PUT", B::None, false, action<&VmControl::shutdown>}},
      {"vm.power-button", {"PUT", B::None, false, action<&VmControl::power_button>}},
      {"vm.nmi", {"PUT", B::None, false, action<&VmControl::nmi>}},
      {"vm.delete", {"PUT", B::None, false, action<&VmControl::remove>}},
      {"vm.info",
       {"GET", B::Ignored, true,
        [](VmControl& c, const json&) {
          VmInfo info = c.info();
          if (info.state == VmState::NotCreated) return error_reply(404, "the VM is not created: PUT vm.create first");
          return ok(info_json(info));
        }}},
      {"vm.counters", {"GET", B::Ignored, false, [](VmControl& c, const json&) { return ok(json(c.counters())); }}},
      {"vm.add-device",
       {"PUT", B::Required, true,
        [](VmControl& c, const json& body) {
          DeviceRequest d = parse_device_config(body);
          DeviceInfo added = c.add_device(d.host, d.id);
          // Like cloud-hypervisor: a device added to a VM that is not running joins its config and has no
          // guest address yet (204); a hot-plugged one reports where the guest sees it (200).
          if (added.bdf.empty()) return no_content();
          return ok({{"id", added.id}, {"bdf", added.bdf}});
        }}},
      {"vm.remove-device",
       {"PUT", B::Required, true,
        [](VmControl& c, const json& body) {
          // 202: the guest has been asked and has not let go yet; vm.info lists the device until it does.
          if (c.remove_device(parse_remove_device(body)) == Removal::Pending) return Reply{202, {}};
          return no_content();
        }}},
  };
  return table;
}

// cloud-hypervisor endpoints passvm does not serve, and why: a client gets a reason, not just a 404.
const std::map<std::string_view, std::string_view>& refused_endpoints() {
  static constexpr std::string_view kVirtio =
      "passvm has no virtio devices; pass a host device through with vm.add-device instead";
  static constexpr std::string_view kState =
      "passvm cannot save a VM's state: a passed-through device's state lives in the hardware";
  static const std::map<std::string_view, std::string_view> table{
      {"vm.add-disk", kVirtio},
      {"vm.add-net", kVirtio},
      {"vm.add-fs", kVirtio},
      {"vm.add-pmem", kVirtio},
      {"vm.add-vsock", kVirtio},
      {"vm.add-vdpa", kVirtio},
      {"vm.add-generic-vhost-user", kVirtio},
      {"vm.add-user-device", "passvm has no vfio-user devices; pass a host device through with vm.add-device"},
      {"vm.resize", "passvm has no CPU or memory hotplug"},
      {"vm.resize-zone", "passvm has no memory zones or memory hotplug"},
      {"vm.resize-disk", "passvm has no virtio disks"},
      {"vm.snapshot", kState},
      {"vm.restore", kState},
      {"vm.send-migration", kState},
      {"vm.receive-migration", kState},
      {"vm.coredump", "passvm cannot dump guest memory"},
  };
  return table;
}

int status_for(const ControlError& e, const Endpoint& ep, VmControl& control) {
  switch (e.kind()) {
    case Kind::BadRequest: return 400;
    case Kind::NotFound: return 404;
    case Kind::Conflict: return 409;
    case Kind::Failed: return 500;
    case Kind::WrongState:
      // cloud-hypervisor tells VmNotCreated/VmMissingConfig (404) from its other state errors
      // (VmNotRunning, VmAlreadyCreated: 500); ControlError does not, so the state decides.
      if (ep.absent_vm_is_404) {
        try {
          if (control.info().state == VmState::NotCreated) return 404;
        } catch (...) {
        }
      }
      return 500;
  }
  return 500;
}

http::Response dispatch(VmControl& control, const http::Request& req) {
  std::string_view path = req.path;
  if (path.substr(0, kRoot.size()) != kRoot)
    return error_reply(404, fmt::format("no such endpoint: {}; passvm's API is under {}", path, kRoot));
  std::string_view name = path.substr(kRoot.size());
  auto it = endpoints().find(name);
  if (it == endpoints().end()) {
    if (auto r = refused_endpoints().find(name); r != refused_endpoints().end())
      return error_reply(400, fmt::format("{}: {}", name, r->second));
    return error_reply(404, fmt::format("no such endpoint: {}", path));
  }
  const Endpoint& ep = it->second;
  if (req.method != ep.method) return error_reply(400, fmt::format("{} takes {}, not {}", name, ep.method, req.method));
  json body;
  if (ep.body == Endpoint::Body::None && !req.body.empty())
    return error_reply(400, fmt::format("{} takes no body", name));
  if (ep.body == Endpoint::Body::Required) {
    if (req.body.empty()) return error_reply(400, fmt::format("{} needs a JSON body", name));
    try {
      // No request of this API nests deeper than a few levels; a body that does is refused before
      // anything walks it.
      body = json::parse(req.body, [](int depth, json::parse_event_t, json&) {
        if (depth > kMaxBodyDepth)
          throw std::invalid_argument(fmt::format("it nests deeper than {} levels", kMaxBodyDepth));
        return true;
      });
    } catch (const json::exception& e) {
      return error_reply(400, fmt::format("the body is not JSON: {}", e.what()));
    } catch (const std::invalid_argument& e) {
      return error_reply(400, fmt::format("the body is refused: {}", e.what()));
    }
  }
  try {
    return ep.handle(control, body);
  } catch (const ControlError& e) {
    return error_reply(status_for(e, ep, control), e.what());
  } catch (const json::exception& e) {
    return error_reply(400, fmt::format("the body does not fit {}: {}", name, e.what()));
  } catch (const std::exception& e) {
    return error_reply(500, e.what());
  } catch (...) {
    return error_reply(500, "internal error");
  }
}

[[noreturn]] void cannot_listen(const std::string& path, const std::string& why) {
  throw std::runtime_error(fmt::format("--api-socket {}: {}", path, why));
}

// Whether a server accepts connections on the socket at `path`.
bool socket_is_live(const std::string& path) {
  int fd = connect_unix(path);
  if (fd >= 0) {
    close(fd);
    return true;
  }
  if (errno == ECONNREFUSED) return false;
  cannot_listen(path, fmt::format("cannot tell whether a server is behind the existing socket: {}; remove it or "
                                  "choose another path",
                                  strerror(errno)));
}

// Checks that `path` can be bound; removes a stale socket file.
void prepare_path(const std::string& path) {
  if (path.empty()) cannot_listen(path, "empty path; give the path of the socket to create");
  if (path.size() >= sizeof(sockaddr_un::sun_path))
    cannot_listen(path, fmt::format("{} bytes is too long for a unix socket path (at most {}); choose a shorter path",
                                    path.size(), sizeof(sockaddr_un::sun_path) - 1));
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0)
    cannot_listen(path, fmt::format("the directory {} {}: create it (mkdir -p {}) or choose another path",
                                    dir.string(), errno == ENOENT ? "does not exist" : strerror(errno), dir.string()));
  if (!S_ISDIR(st.st_mode)) cannot_listen(path, fmt::format("{} is not a directory", dir.string()));
  if (lstat(path.c_str(), &st) != 0) return;
  if (!S_ISSOCK(st.st_mode))
    cannot_listen(path, "the file exists and is not a socket; remove it or choose another path");
  if (socket_is_live(path))
    cannot_listen(path, "a server is answering on it (another passvm, or a cloud-hypervisor?); stop it or choose "
                        "another path");
  if (unlink(path.c_str()) != 0 && errno != ENOENT)
    cannot_listen(path, fmt::format("cannot remove the stale socket: {}", strerror(errno)));
}

}  // namespace

struct Server::Impl {
  VmControl& control;
  std::string path;
  Log log;
  std::unique_ptr<http::Listener> listener;
  std::mutex stop_lock;
  bool stopped = false;
  ino_t inode = 0;  // of our socket file, so stop() never removes a successor's
  int file = -1;    // the socket file itself (O_PATH), for give_to()
  // Whether the listener may accept: it waits while `held` (Start::on_serve, until serve() or stop()).
  std::mutex gate_lock;
  std::condition_variable gate_opened;
  bool held = false;
  bool stopping = false;

  Impl(VmControl& c, std::string p, Log l) : control(c), path(std::move(p)), log(std::move(l)) {}

  // On the listener thread: true once it may accept, false when the server stops first.
  bool wait_for_gate() {
    std::unique_lock lock(gate_lock);
    gate_opened.wait(lock, [this] { return !held || stopping; });
    return !stopping;
  }
  void open_gate(bool stop) {
    {
      std::lock_guard lock(gate_lock);
      held = false;
      stopping = stopping || stop;
    }
    gate_opened.notify_all();
  }
};

Server::Server(VmControl& control, const std::string& socket_path, Log log, Start start)
    : impl_(std::make_unique<Impl>(control, socket_path, std::move(log))) {
  Impl& p = *impl_;
  p.held = start == Start::on_serve;
  const http::Module& transport = http::module("--api-socket");
  prepare_path(p.path);
  http::ServerSetup setup;
  setup.handle = [&p](const http::Request& req) { return dispatch(p.control, req); };
  setup.log = [&p](const http::Request& req, const http::Response& res) {
    if (!p.log) return;
    std::string line = fmt::format("{} {} {}", req.method, req.path, res.status);
    if (res.status >= 400) {
      try {
        line += ": " + json::parse(res.body).at(0).get<std::string>();
      } catch (...) {
      }
    }
    p.log(res.status, line);
  };
  // The request threads are started by the listener with its filter.
  setup.on_listener_thread = [&p] {
    confine::enter(confine::ThreadClass::Api, "pv-api");
    return p.wait_for_gate();
  };
  setup.on_request = [] { confine::label_thread("pv-api"); };
  setup.max_body = kMaxBody;
  try {
    p.listener = transport.listen(p.path, std::move(setup));
  } catch (const std::runtime_error& e) {
    cannot_listen(p.path, e.what());
  }
  // From here on the socket file is reached through a descriptor, not its path: the directory may be
  // another user's (--user), who could put a link to any file at that name while root works on it.
  // (A directory of theirs higher up the path could still be swapped between the bind and this open;
  // what is opened must then at least be a socket.)
  p.file = open(p.path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
  struct stat st {};
  std::string problem;
  if (p.file < 0 || fstat(p.file, &st) != 0)
    problem = fmt::format("cannot open what was bound: {}", strerror(errno));
  else if (!S_ISSOCK(st.st_mode))
    problem = "the socket was replaced by another file while passvm set it up";
  else if ((st.st_mode & 0777) != 0600 && chmod(fmt::format("/proc/self/fd/{}", p.file).c_str(), 0600) != 0)
    problem = fmt::format("cannot make the socket private (mode 0600): {}", strerror(errno));  // bound 0600 on Linux
  if (!problem.empty()) {
    p.open_gate(true);
    p.listener->stop();
    if (p.file >= 0) close(p.file);
    // Ours to remove only while a socket is what the name holds.
    if (p.file >= 0 ? S_ISSOCK(st.st_mode) : lstat(p.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode))
      unlink(p.path.c_str());
    cannot_listen(p.path, problem);
  }
  p.inode = st.st_ino;
}

void Server::give_to(uid_t uid, gid_t gid) {
  if (fchownat(impl_->file, "", uid, gid, AT_EMPTY_PATH) != 0)
    throw std::runtime_error(fmt::format("cannot give {} to uid {}: {}", impl_->path, uid, strerror(errno)));
}

Server::~Server() { stop(); }

void Server::serve() { impl_->open_gate(false); }

void Server::stop() {
  Impl& p = *impl_;
  std::lock_guard guard(p.stop_lock);
  if (p.stopped) return;
  p.stopped = true;
  p.open_gate(true);
  p.listener->stop();
  struct stat st {};
  if (lstat(p.path.c_str(), &st) == 0 && st.st_ino == p.inode) unlink(p.path.c_str());
  if (p.file >= 0) close(std::exchange(p.file, -1));
}

const std::string& Server::socket_path() const { return impl_->path; }

}  // namespace passvm::api
