// api: passvm-http.so, the HTTP transport over cpp-httplib (see http.h). Only this file includes
// httplib.h in passvm; it is built as a module of its own and loaded on first use.
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <httplib.h>

#include "api/http.h"

namespace passvm::api::http {

namespace {

class HttplibListener final : public Listener {
 public:
  HttplibListener(const std::string& path, ServerSetup setup);
  ~HttplibListener() override { stop(); }
  HttplibListener(const HttplibListener&) = delete;
  HttplibListener& operator=(const HttplibListener&) = delete;

  void stop() override;

 private:
  void serve(const httplib::Request& req, httplib::Response& res);
  void log(const httplib::Request& req, const httplib::Response& res);

  ServerSetup setup_;
  httplib::Server http_;
  std::thread thread_;
  std::atomic<bool> listen_returned_{false};
  std::mutex stop_lock_;
  bool stopped_ = false;
  int listen_fd_ = -1;
};

// The request thread runs the handler and then httplib's logger; this tells the logger that the
// handler (or the exception handler) logged the request already.
thread_local bool logged = false;

Request request_of(const httplib::Request& req) { return {req.method, req.path, req.body}; }

HttplibListener::HttplibListener(const std::string& path, ServerSetup setup) : setup_(std::move(setup)) {
  auto handler = [this](const httplib::Request& req, httplib::Response& res) { serve(req, res); };
  // Every method that can carry a route reaches the handler, which decides its own statuses; httplib
  // would answer 404 for a known path and an unexpected method.
  http_.Get(".*", handler);
  http_.Put(".*", handler);
  http_.Post(".*", handler);
  http_.Patch(".*", handler);
  http_.Delete(".*", handler);
  http_.Options(".*", handler);
  // Before httplib reads a body, whose size it bounds only when a Content-Length gives it. A request with
  // neither Content-Length nor Transfer-Encoding has no body (RFC 9112, 6.3), where httplib would read
  // until the client closes or its read times out (a `curl -X PUT` of vm.boot got a 400 after 5 s): it is
  // served here at once. A chunked or compressed body could grow without bound: refused.
  http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    auto refuse = [&](int status, const char* why) {
      res.status = status;
      res.set_content(std::string(R"([")") + why + R"("])", "application/json");
      return httplib::Server::HandlerResponse::Handled;
    };
    if (req.has_header("Transfer-Encoding"))
      return refuse(411, "send the body with a Content-Length: chunked bodies are not accepted");
    if (req.has_header("Content-Encoding"))
      return refuse(415, "send the body uncompressed: no Content-Encoding is accepted");
    // httplib would parse these itself (and refuse a form over 8 KiB as too large): JSON under another
    // name gets the right error instead.
    const std::string type = req.get_header_value("Content-Type");
    if (type.starts_with("application/x-www-form-urlencoded") || type.starts_with("multipart/"))
      return refuse(415, "the API takes JSON: send the body with Content-Type: application/json (curl's -d "
                         "alone says it is a form)");
    if (req.has_header("Content-Length")) return httplib::Server::HandlerResponse::Unhandled;
    serve(req, res);
    return httplib::Server::HandlerResponse::Handled;
  });
  // What httplib answers by itself carries no body; the API's errors are JSON lists of messages.
  http_.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string why;
    if (res.status == 413)
      why = "the body is over " + std::to_string(setup_.max_body >> 20) + " MiB: no request needs that much";
    else if (res.status == 400)
      why = "not an HTTP/1.1 request this server can read";
    else if (res.status == 414)
      why = "the request's path is too long: no endpoint has such a path";
    else if (res.status >= 400)
      why = "refused by the HTTP layer (status " + std::to_string(res.status) + ")";
    else
      return httplib::Server::HandlerResponse::Unhandled;
    res.set_content("[\"" + why + "\"]", "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  http_.set_exception_handler([this](const httplib::Request& req, httplib::Response& res, std::exception_ptr) {
    res.status = 500;
    res.set_content(R"(["internal error"])", "application/json");
    log(req, res);
  });
  http_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    if (!logged) log(req, res);
    logged = false;
  });
  // httplib sizes its request threads from the number of CPUs when it starts listening, on the listener
  // thread, whose filter may not let it read sysfs: sized here instead, by httplib's own rule.
  const size_t workers = CPPHTTPLIB_THREAD_POOL_COUNT;
  http_.new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
  http_.set_address_family(AF_UNIX);
  // The socket file takes the mode of the socket's inode when it is bound (Linux's unix_bind), so it
  // is created 0600 without touching the process-wide umask.
  http_.set_socket_options([this](socket_t fd) {
    fchmod(fd, 0600);
    listen_fd_ = fd;
  });
  // One request per connection ("Connection: close"): stop() then never waits on an idle keep-alive
  // connection, and no client races the server closing one.
  http_.set_keep_alive_max_count(1);
  http_.set_keep_alive_timeout(2);
  http_.set_read_timeout(5);
  http_.set_write_timeout(5);
  http_.set_payload_max_length(setup_.max_body);
  errno = 0;
  if (!http_.bind_to_port(path, 80)) {
    int err = errno;
    throw std::runtime_error(std::string("cannot listen: ") + (err ? strerror(err) : "bind failed") +
                             "; check that the directory is writable");
  }
  // httplib listens with a backlog of 5, and a client connecting to a unix socket whose backlog is full
  // fails at once (EAGAIN) rather than waiting: a burst of requests would see refusals.
  listen(listen_fd_, SOMAXCONN);
  thread_ = std::thread([this] {
    // The thread's confinement failing must end its serving, not the process (an exception leaving a
    // thread aborts): the API then answers nobody, and says why.
    // httplib closes the socket when its listening ends, and not at all when it never began.
    auto serve_nothing = [this] {
      close(listen_fd_);
      listen_returned_ = true;
    };
    try {
      if (setup_.on_listener_thread && !setup_.on_listener_thread()) return serve_nothing();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "passvm: the API serves no requests: %s\n", e.what());
      return serve_nothing();
    }
    http_.listen_after_bind();
    listen_returned_ = true;
  });
}

void HttplibListener::serve(const httplib::Request& req, httplib::Response& res) {
  if (setup_.on_request) setup_.on_request();
  Request request = request_of(req);
  Response r = setup_.handle(request);
  res.status = r.status;
  if (!r.body.empty()) res.set_content(r.body, "application/json");
  logged = true;
  if (setup_.log) setup_.log(request, r);
}

void HttplibListener::log(const httplib::Request& req, const httplib::Response& res) {
  logged = true;
  Request r = request_of(req);
  if (r.method.empty()) r = {"-", "(a request the server could not read)", {}};  // its request line itself
  if (setup_.log) setup_.log(r, Response{res.status, res.body});
}

void HttplibListener::stop() {
  std::lock_guard guard(stop_lock_);
  if (stopped_) return;
  stopped_ = true;
  // httplib's stop() does nothing until listen_after_bind() has marked the server running.
  while (!http_.is_running() && !listen_returned_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  http_.stop();
  thread_.join();
}

std::unique_ptr<Listener> listen_on(const std::string& path, ServerSetup setup) {
  return std::make_unique<HttplibListener>(path, std::move(setup));
}

SendResult send(const std::string& path, const Request& request, int connect_timeout_s, int read_timeout_s) {
  httplib::ClientImpl http(path, 80);
  http.set_address_family(AF_UNIX);
  http.set_connection_timeout(connect_timeout_s);
  http.set_read_timeout(read_timeout_s);
  httplib::Request req;
  req.method = request.method;
  req.path = request.path;
  req.set_header("Accept", "application/json");
  if (!request.body.empty()) {
    req.body = request.body;
    req.set_header("Content-Type", "application/json");
  }
  SendResult out;
  httplib::Result res = http.send(req);
  if (!res) {
    out.connect_failed = res.error() == httplib::Error::Connection;
    out.error = httplib::to_string(res.error());
    return out;
  }
  out.sent = true;
  out.response = {res->status, res->body};
  return out;
}

const Module kModule{kAbi, listen_on, send};

}  // namespace

}  // namespace passvm::api::http

extern "C" const passvm::api::http::Module* passvm_http_module() { return &passvm::api::http::kModule; }
