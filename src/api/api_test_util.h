// api (tests): a temporary directory, a Server on a socket in it over a FakeControl, and raw HTTP
// requests to it, shared by the server and client tests.
#pragma once

#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "api/fake_control.h"
#include "api/http.h"
#include "api/server.h"
#include "api/unix_socket.h"

namespace passvm::testing {

// The tests run outside the passvm binary's directory, where the server and the client look for the
// HTTP module: it is loaded from the build tree before any test.
inline const bool http_module_loaded = (api::http::use_module_file(PASSVM_HTTP_MODULE_FILE), true);

// A fresh directory under /tmp (short, so socket paths stay within sun_path), removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string pattern = "/tmp/passvm-api-XXXXXX";
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

struct HttpReply {
  int status = 0;  // 0: no answer
  std::string body;
  std::string content_type;
  nlohmann::json json() const { return nlohmann::json::parse(body); }
  // The message of a cloud-hypervisor error body, ["message"].
  std::string message() const {
    auto j = json();
    return j.is_array() && !j.empty() ? j[0].get<std::string>() : body;
  }
};

inline HttpReply http(const std::string& socket, const std::string& method, const std::string& path,
                      const std::string& body = {}) {
  httplib::ClientImpl client(socket, 80);
  client.set_address_family(AF_UNIX);
  httplib::Request req;
  req.method = method;
  req.path = path.rfind('/', 0) == 0 ? path : "/api/v1/" + path;
  if (!body.empty()) {
    req.body = body;
    req.set_header("Content-Type", "application/json");
  }
  auto res = client.send(req);
  if (!res) return {};
  return {res->status, res->body, res->get_header_value("Content-Type")};
}

// Writes `bytes` on a fresh connection and returns what comes back before the server closes it (it
// answers one request per connection); with no bytes, hangs up at once.
inline std::string raw_exchange(const std::string& socket, const std::string& bytes) {
  int fd = api::connect_unix(socket);
  if (fd < 0) return "connect failed";
  if (!bytes.empty() && write(fd, bytes.data(), bytes.size()) < 0) {
    close(fd);
    return "write failed";
  }
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  std::string out;
  if (bytes.empty()) {
    close(fd);
    return out;
  }
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

// A server over a fake machine, on dir/api.sock.
class ServerFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    socket_path = dir / "api.sock";
    server = std::make_unique<api::Server>(control, socket_path);
  }
  HttpReply call(const std::string& method, const std::string& path, const std::string& body = {}) {
    return http(socket_path, method, path, body);
  }
  // Creates and boots a VM with one device, nvme0 = host 0000:00:04.0.
  void boot_with_device() {
    ASSERT_EQ(call("PUT", "vm.create",
                   R"({"payload": {"kernel": "/k"}, "devices": [{"path": "0000:00:04.0", "id": "nvme0"}]})")
                  .status,
              204);
    ASSERT_EQ(call("PUT", "vm.boot").status, 204);
  }

  TempDir dir;
  std::string socket_path;
  FakeControl control;
  std::unique_ptr<api::Server> server;
};

}  // namespace passvm::testing
