// api: HTTP over a unix socket, the transport under the API's server and `passvm remote`.
//
// The transport is a module of its own, passvm-http.so, loaded on first use. The HTTP library
// (Debian's cpp-httplib) brings TLS and compression libraries along, whose loading and set-up were
// more than half of passvm's process start; a passvm that neither serves nor uses the API no
// longer pays for them. The module holds no passvm code: the API's routes, statuses and confinement
// stay in the binary and reach the module through the callbacks below.
//
// Where the module is looked for: beside the passvm binary (a build tree), then in the directory it
// is installed to relative to the binary (PASSVM_HTTP_MODULE_DIR, bin/../lib/passvm on most hosts).
//
// Lifetime: loaded once per process, never unloaded (its request threads and static state belong
// to it). A Listener calls its callbacks from its own threads until stop() returns.
#pragma once

#include <functional>
#include <memory>
#include <string>

namespace passvm::api::http {

struct Request {
  std::string method;
  std::string path;
  std::string body;  // JSON, or empty
};

struct Response {
  int status = 0;
  std::string body;  // JSON (sent as application/json), or empty
};

struct ServerSetup {
  // Every request that reaches the server, whatever its method and path. Must not throw: an
  // exception is answered 500 ["internal error"].
  std::function<Response(const Request&)> handle;
  // Each reply, once: before it is sent for the ones `handle` made (so that a client's next request
  // is never logged ahead of the one it waited for), after it for the ones the transport made itself
  // (a malformed request, an exception).
  std::function<void(const Request&, const Response&)> log;
  // First thing on the listening thread; the request threads are started from it and inherit what
  // it sets up (a seccomp filter). It may wait before accepting (connections wait in the backlog);
  // false: accept nothing, the listener is being stopped (stop() then returns once it has returned).
  std::function<bool()> on_listener_thread;
  // First thing for each request, on the thread that serves it.
  std::function<void()> on_request;
  size_t max_body = 0;
};

class Listener {
 public:
  virtual ~Listener() = default;
  // Stops accepting and waits for the requests in progress to be answered. Idempotent; not from a
  // request thread. The socket file is left to the caller.
  virtual void stop() = 0;
};

struct SendResult {
  bool sent = false;             // a reply came back: `response` holds it
  bool connect_failed = false;   // nothing answered on the socket
  std::string error;             // what went wrong when !sent
  Response response;
};

// What the module exports, as passvm_http_module() (C linkage) returns it.
struct Module {
  int abi;  // kAbi of the passvm it was built with: a stale module is refused, not called
  // Binds `path` (free: the caller removed any stale socket) as a unix socket of mode 0600, listens,
  // and starts serving. Throws std::runtime_error saying what failed (errno text) on failure.
  std::unique_ptr<Listener> (*listen)(const std::string& path, ServerSetup setup);
  // One request on a fresh connection to the socket at `path`.
  SendResult (*send)(const std::string& path, const Request& request, int connect_timeout_s, int read_timeout_s);
};

// Bumped whenever Module or the types above change.
inline constexpr int kAbi = 2;

// Loads the module (once; later calls return it at once). Throws std::runtime_error naming the
// file looked for and the fix when it is missing or does not load. `purpose` says what needed it
// ("--api-socket", "passvm remote").
const Module& module(const std::string& purpose);

// Loads the module from `path` instead of the usual places, for tests that run outside the
// binary's directory. Throws as module() does.
void use_module_file(const std::string& path);

}  // namespace passvm::api::http

extern "C" const passvm::api::http::Module* passvm_http_module();
