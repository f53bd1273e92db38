// api: the control plane, cloud-hypervisor's REST API over a unix socket.
//
// Server answers /api/v1/ requests with cloud-hypervisor's endpoint names, methods, bodies and
// status codes (see README.md) by calling VmControl, so that cloud-hypervisor's clients (ch-remote,
// Kata Containers) and `passvm remote` can drive passvm.
//
// Lifetime: the constructor binds the socket (or throws, naming the path and the fix) and starts a
// thread that accepts connections, at once or (Start::on_serve) from the first serve() on: a passvm
// that will give up root (--user) reads no request before it has, and clients connecting meanwhile
// wait in the socket's backlog. Requests are served on a small pool of threads, so VmControl is
// called from several threads at once (it serialises). stop(), or the destructor, stops accepting,
// waits for the requests in progress to be answered and removes the socket file. The VmControl must
// outlive the Server.
//
// vmm.shutdown calls VmControl::shutdown_vmm() from a request thread before the reply is written.
// shutdown_vmm() must therefore only ask the process to end (shut the VM down, signal the main thread)
// and return; the main thread then destroys the Server, which returns once the reply has been written,
// and exits. Waiting inside shutdown_vmm() for the Server to stop would deadlock.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <sys/types.h>

#include "vmm/control.h"

namespace passvm::api {

class Server {
 public:
  // Called once per request, after the reply: its status and "PUT /api/v1/vm.boot 204", with the error
  // message when there was one. From the request threads, concurrently.
  using Log = std::function<void(int status, std::string_view line)>;

  enum class Start { now, on_serve };

  // Listens on `socket_path`, a unix socket created with mode 0600. A stale socket file (no server
  // behind it) is replaced; a live one, or any other file, is an error.
  Server(VmControl& control, const std::string& socket_path, Log log = {}, Start start = Start::now);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Begins answering (Start::on_serve). Idempotent; any thread.
  void serve();
  // Idempotent. Not from a request thread (it waits for them).
  void stop();
  const std::string& socket_path() const;
  // Makes the socket file `uid`'s (--user), through the file bound rather than its path. Throws
  // std::runtime_error saying why it could not.
  void give_to(uid_t uid, gid_t gid);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace passvm::api
