// The server over a real unix socket: every endpoint's status and body, error mapping, robustness, the
// socket file's life, and Kata's request sequence replayed by replay.py.
#include "api/server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "api/api_test_util.h"

namespace passvm::testing {
namespace {

using nlohmann::json;
using Kind = ControlError::Kind;

using ApiServer = ServerFixture;

TEST_F(ApiServer, PingAnswersWithVersionAndPid) {
  HttpReply r = call("GET", "vmm.ping");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "application/json");
  json j = r.json();
  EXPECT_EQ(j["version"], "0.1.0");
  EXPECT_EQ(j["build_version"], "passvm v0.1.0");
  EXPECT_EQ(j["pid"], getpid());
  EXPECT_EQ(j["features"], json::array());
}

TEST_F(ApiServer, LifecycleThroughEveryAction) {
  EXPECT_EQ(call("GET", "vm.info").status, 404);  // nothing created yet
  HttpReply r = call("PUT", "vm.create", R"({"payload": {"kernel": "/k", "cmdline": "quiet"},
                                             "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
                                             "memory": {"size": 1073741824}, "serial": {"mode": "Tty"}})");
  ASSERT_EQ(r.status, 204) << r.body;
  EXPECT_TRUE(r.body.empty());
  MachineConfig c = control.config();
  EXPECT_EQ(c.kernel, "/k");
  EXPECT_EQ(c.cpus, 2u);
  EXPECT_EQ(c.memory, 1ull << 30);
  EXPECT_EQ(c.com1, "stdio");

  json info = call("GET", "vm.info").json();
  EXPECT_EQ(info["state"], "Created");
  EXPECT_EQ(info["memory_actual_size"], 1ull << 30);
  EXPECT_EQ(info["config"]["payload"]["cmdline"], "quiet");
  EXPECT_FALSE(info.contains("device_tree"));  // no machine yet

  const std::vector<std::pair<std::string, VmState>> steps{
      {"vm.boot", VmState::Running},   {"vm.pause", VmState::Paused},    {"vm.resume", VmState::Running},
      {"vm.reboot", VmState::Running}, {"vm.shutdown", VmState::Shutdown}, {"vm.boot", VmState::Running},
      {"vm.delete", VmState::NotCreated}};
  for (const auto& [endpoint, state] : steps) {
    HttpReply s = call("PUT", endpoint);
    EXPECT_EQ(s.status, 204) << endpoint << ": " << s.body;
    EXPECT_EQ(control.state(), state) << endpoint;
  }
  std::vector<std::string> expected{"create", "boot", "pause", "resume", "reboot", "shutdown", "boot", "remove"};
  EXPECT_EQ(control.calls(), expected);
}

TEST_F(ApiServer, InfoReportsDevicesWhereTheGuestSeesThem) {
  boot_with_device();
  HttpReply r = call("GET", "vm.info");
  ASSERT_EQ(r.status, 200);
  json info = r.json();
  EXPECT_EQ(info["state"], "Running");
  EXPECT_EQ(info["config"]["devices"],
            json::parse(R"([{"path": "/sys/bus/pci/devices/0000:00:04.0/", "id": "nvme0"}])"));
  EXPECT_EQ(info["device_tree"]["nvme0"],
            json::parse(R"({"id": "nvme0", "resources": [], "children": [], "pci_bdf": "0000:00:03.0"})"));
}

TEST_F(ApiServer, PowerButtonReachesABootedVmOnly) {
  // cloud-hypervisor answers 500 (VmNotRunning) when there is no VM to press the button of.
  EXPECT_EQ(call("PUT", "vm.power-button").status, 500);
  ASSERT_EQ(call("PUT", "vm.create", R"({"payload": {"kernel": "/k"}})").status, 204);
  HttpReply created = call("PUT", "vm.power-button");
  EXPECT_EQ(created.status, 500);
  EXPECT_EQ(created.message(), "the VM is not booted");
  ASSERT_EQ(call("PUT", "vm.boot").status, 204);
  HttpReply pressed = call("PUT", "vm.power-button");
  EXPECT_EQ(pressed.status, 204) << pressed.body;
  EXPECT_TRUE(pressed.body.empty());
  EXPECT_EQ(control.calls().back(), "power_button");
  EXPECT_EQ(control.state(), VmState::Running) << "the guest decides what a press does";
  EXPECT_EQ(call("PUT", "vm.power-button", R"({"force": true})").status, 400) << "it takes no body";
  EXPECT_EQ(call("GET", "vm.power-button").status, 400);
}

TEST_F(ApiServer, NmiReachesABootedVmOnly) {
  EXPECT_EQ(call("PUT", "vm.nmi").status, 500);  // cloud-hypervisor: VmNotRunning
  ASSERT_EQ(call("PUT", "vm.create", R"({"payload": {"kernel": "/k"}})").status, 204);
  EXPECT_EQ(call("PUT", "vm.nmi").message(), "the VM is not booted");
  ASSERT_EQ(call("PUT", "vm.boot").status, 204);
  ASSERT_EQ(call("PUT", "vm.pause").status, 204);
  HttpReply sent = call("PUT", "vm.nmi");
  EXPECT_EQ(sent.status, 204) << sent.body;
  EXPECT_EQ(control.calls().back(), "nmi");
  EXPECT_EQ(control.state(), VmState::Paused);
  EXPECT_EQ(call("PUT", "vm.nmi", R"({"cpu": 0})").status, 400) << "it takes no body";
  EXPECT_EQ(call("GET", "vm.nmi").status, 400);
}

// Bodies nested absurdly deep, or with a container where a string belongs: a 400 naming the problem,
// and passvm answers on (printing such a value in the message once took the request thread's stack).
TEST_F(ApiServer, DeeplyNestedBodiesAreRefused) {
  std::string deep = R"({"id": )" + std::string(100000, '[') + std::string(100000, ']') + "}";
  HttpReply r = call("PUT", "vm.remove-device", deep);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.message().find("nests deeper than 64 levels"), std::string::npos) << r.body;
  HttpReply shallow = call("PUT", "vm.remove-device", R"({"id": [[1, 2], {"a": [3]}]})");
  EXPECT_EQ(shallow.status, 400);
  EXPECT_EQ(shallow.message().rfind("id: expected a string, got array", 0), 0u) << shallow.body;
  EXPECT_EQ(call("GET", "vmm.ping").status, 200);
}

TEST_F(ApiServer, InfoSurvivesPathsThatAreNotUtf8) {
  MachineConfig c;  // as the command line may give it: JSON cannot carry the byte as it is
  c.kernel = "/boot/vmlinuz-\xff";
  control.create(c);
  HttpReply r = call("GET", "vm.info");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["config"]["payload"]["kernel"], "/boot/vmlinuz-\xEF\xBF\xBD");
}

TEST_F(ApiServer, AddAndRemoveDevice) {
  ASSERT_EQ(call("PUT", "vm.create", R"({"payload": {"kernel": "/k"}})").status, 204);
  // Cold: the device joins the config and has no guest address yet, cloud-hypervisor's 204.
  HttpReply cold = call("PUT", "vm.add-device", R"({"path": "/sys/bus/pci/devices/0000:00:04.0/", "id": "a"})");
  EXPECT_EQ(cold.status, 204) << cold.body;
  ASSERT_EQ(call("PUT", "vm.boot").status, 204);
  // Hot, without an id, as Kata's hotPlugVFIODevice sends it.
  HttpReply hot = call("PUT", "vm.add-device", R"({"path": "/sys/bus/pci/devices/0000:00:05.0", "iommu": false})");
  ASSERT_EQ(hot.status, 200) << hot.body;
  EXPECT_EQ(hot.json(), json::parse(R"({"id": "_vfio0", "bdf": "0000:00:04.0"})"));
  EXPECT_EQ(control.calls().back(), "add_device 0000:00:05.0 ");

  HttpReply dup = call("PUT", "vm.add-device", R"({"path": "0000:00:05.0"})");
  EXPECT_EQ(dup.status, 409);
  EXPECT_EQ(dup.message(), "0000:00:05.0 is already in this VM");
  EXPECT_EQ(call("PUT", "vm.add-device", R"({"path": "/sys/bus/pci/devices/0000:00:06.0/", "id": "a"})").status, 409);
  HttpReply bad = call("PUT", "vm.add-device", R"({"path": "/dev/vfio/12"})");
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(bad.message().rfind("path: '/dev/vfio/12' is not under /sys/bus/pci/devices/", 0), 0u) << bad.body;

  EXPECT_EQ(call("PUT", "vm.remove-device", R"({"id": "_vfio0"})").status, 204);
  EXPECT_EQ(control.calls().back(), "remove_device _vfio0");
  HttpReply gone = call("PUT", "vm.remove-device", R"({"id": "_vfio0"})");
  EXPECT_EQ(gone.status, 404);
  EXPECT_EQ(gone.message(), "no device '_vfio0' in this VM");
  HttpReply noid = call("PUT", "vm.remove-device", R"({"name": "a"})");
  EXPECT_EQ(noid.status, 400);
  EXPECT_EQ(noid.message().rfind("id: missing", 0), 0u);
}

// A guest that has not let go within the server's wait: 202, the device still listed, and asking again
// is another 202, not an error.
TEST_F(ApiServer, RemovalTheGuestHasNotFinishedIsAccepted) {
  boot_with_device();
  control.eject_after_polls(-1);
  HttpReply r = call("PUT", "vm.remove-device", R"({"id": "nvme0"})");
  EXPECT_EQ(r.status, 202) << r.body;
  EXPECT_EQ(r.body, "");
  HttpReply info = call("GET", "vm.info");
  ASSERT_EQ(info.status, 200);
  EXPECT_TRUE(info.json().at("device_tree").contains("nvme0")) << info.body;
  EXPECT_EQ(call("PUT", "vm.remove-device", R"({"id": "nvme0"})").status, 202);
  EXPECT_EQ(call("PUT", "vm.remove-device", R"({"id": "nothing"})").status, 404);
}

TEST_F(ApiServer, CountersAndVmmShutdown) {
  EXPECT_EQ(call("GET", "vm.counters").status, 500);  // cloud-hypervisor: VmNotRunning
  boot_with_device();
  HttpReply r = call("GET", "vm.counters");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.json()["vcpu0"]["exits"], 42);
  EXPECT_EQ(r.json()["nvme0"]["bar_reads"], 3);
  HttpReply s = call("PUT", "vmm.shutdown");
  EXPECT_EQ(s.status, 204);
  EXPECT_TRUE(control.vmm_shutdown_requested());
  server->stop();  // what the main thread does once shutdown_vmm() has signalled it
  EXPECT_FALSE(std::filesystem::exists(socket_path));
}

TEST_F(ApiServer, ControlErrorKindsMapToStatuses) {
  ASSERT_EQ(call("PUT", "vm.create", R"({"payload": {"kernel": "/k"}})").status, 204);
  const std::vector<std::pair<Kind, int>> cases{
      {Kind::BadRequest, 400}, {Kind::NotFound, 404}, {Kind::Conflict, 409}, {Kind::Failed, 500},
      {Kind::WrongState, 500}};  // the VM exists: cloud-hypervisor's VmAlreadyCreated/VmNotRunning are 500s
  for (const auto& [kind, status] : cases) {
    control.fail_next(kind, "the host said no: reserve the device first");
    HttpReply r = call("PUT", "vm.boot");
    EXPECT_EQ(r.status, status) << static_cast<int>(kind);
    EXPECT_EQ(r.json(), json::array({"the host said no: reserve the device first"}));
    EXPECT_EQ(r.content_type, "application/json");
  }
  EXPECT_EQ(control.state(), VmState::Created);  // nothing happened
}

TEST_F(ApiServer, WrongStateWithoutAVmFollowsCloudHypervisor) {
  // boot, reboot, add-device and remove-device answer 404 when there is no VM (VmNotCreated,
  // VmMissingConfig); pause, resume, shutdown and counters answer 500 (VmNotRunning).
  for (const char* e : {"vm.boot", "vm.reboot"}) EXPECT_EQ(call("PUT", e).status, 404) << e;
  EXPECT_EQ(call("PUT", "vm.add-device", R"({"path": "0000:00:04.0"})").status, 404);
  EXPECT_EQ(call("PUT", "vm.remove-device", R"({"id": "a"})").status, 404);
  for (const char* e : {"vm.pause", "vm.resume", "vm.shutdown"}) EXPECT_EQ(call("PUT", e).status, 500) << e;
  EXPECT_EQ(call("PUT", "vm.delete").status, 204);  // deleting nothing is fine
  ASSERT_EQ(call("PUT", "vm.create", R"({"payload": {"kernel": "/k"}})").status, 204);
  HttpReply again = call("PUT", "vm.create", R"({"payload": {"kernel": "/k"}})");
  EXPECT_EQ(again.status, 500);
  EXPECT_EQ(again.message(), "the VM is already created");
  EXPECT_EQ(call("PUT", "vm.resume").status, 500);
}

TEST_F(ApiServer, RequestsThatAreWrongInThemselves) {
  // cloud-hypervisor answers a known path with the wrong method 400, not 405.
  for (auto [method, endpoint] : std::vector<std::pair<std::string, std::string>>{
           {"GET", "vm.boot"}, {"PUT", "vm.info"}, {"POST", "vm.create"}, {"DELETE", "vm.delete"},
           {"PUT", "vmm.ping"}, {"GET", "vmm.shutdown"}, {"PATCH", "vm.add-device"}}) {
    HttpReply r = call(method, endpoint);
    EXPECT_EQ(r.status, 400) << method << " " << endpoint;
    EXPECT_NE(r.message().find("takes"), std::string::npos) << r.body;
  }
  EXPECT_EQ(call("GET", "vm.frobnicate").status, 404);
  EXPECT_EQ(call("GET", "/api/v2/vmm.ping").status, 404);
  EXPECT_EQ(call("GET", "/").status, 404);
  HttpReply net = call("PUT", "vm.add-net", R"({"tap": "tap0"})");
  EXPECT_EQ(net.status, 400);
  EXPECT_EQ(net.message().rfind("vm.add-net: passvm has no virtio devices", 0), 0u);

  EXPECT_EQ(call("PUT", "vm.boot", "{}").status, 400);  // a body where none belongs
  EXPECT_EQ(call("PUT", "vm.create").status, 400);
  HttpReply notjson = call("PUT", "vm.create", "{\"payload\": ");
  EXPECT_EQ(notjson.status, 400);
  EXPECT_EQ(notjson.message().rfind("the body is not JSON", 0), 0u);
  HttpReply vsock = call("PUT", "vm.create", R"({"payload": {"kernel": "/k"}, "vsock": {"cid": 3, "socket": "/s"}})");
  EXPECT_EQ(vsock.status, 400);
  EXPECT_EQ(vsock.message(), "vsock: passvm has no virtio devices; pass a device through with devices[] instead");
  HttpReply dups = call("PUT", "vm.create", R"({"payload": {"kernel": "/k"},
      "devices": [{"path": "0000:00:04.0", "id": "x"}, {"path": "0000:00:05.0", "id": "x"}]})");
  EXPECT_EQ(dups.status, 409);
  EXPECT_TRUE(control.calls().empty());  // none of these reached the machine
}

TEST_F(ApiServer, AFailingMachineNeverTakesTheServerDown) {
  ASSERT_EQ(call("PUT", "vm.create", R"({"payload": {"kernel": "/k"}})").status, 204);
  control.crash_next();
  HttpReply r = call("PUT", "vm.boot");
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.message(), "the fake machine crashed");
  // Not HTTP at all, an oversized body, a client that hangs up at once.
  std::string garbled = raw_exchange(socket_path, "FROBNICATE\r\n\r\n");
  EXPECT_NE(garbled.find("400"), std::string::npos) << garbled;
  EXPECT_NE(garbled.find(R"(["not an HTTP/1.1 request this server can read"])"), std::string::npos) << garbled;
  EXPECT_NE(raw_exchange(socket_path, "GET /api/v1/vmm.ping HTTP/9.9\r\n\r\n").find("400"), std::string::npos);
  HttpReply big = call("PUT", "vm.create", std::string(5 << 20, ' '));  // over cloud-hypervisor's 4 MiB
  EXPECT_EQ(big.status, 413);
  EXPECT_EQ(big.message(), "the body is over 4 MiB: no request needs that much");
  raw_exchange(socket_path, "");
  EXPECT_EQ(call("GET", "vmm.ping").status, 200);
  EXPECT_EQ(call("PUT", "vm.boot").status, 204);
}

TEST_F(ApiServer, ConcurrentRequests) {
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; t++)
    threads.emplace_back([&] {
      for (int i = 0; i < 20; i++) ok += call("GET", "vmm.ping").status == 200;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 160);
}

TEST_F(ApiServer, SocketFileIsPrivateAndGoesAwayOnStop) {
  struct stat st {};
  ASSERT_EQ(lstat(socket_path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(server->socket_path(), socket_path);
  server->stop();
  EXPECT_FALSE(std::filesystem::exists(socket_path));
  server->stop();  // idempotent
  EXPECT_EQ(call("GET", "vmm.ping").status, 0);
}

TEST_F(ApiServer, ARequestWithoutContentLengthHasNoBodyAndIsServedAtOnce) {
  // curl -X PUT sends neither Content-Length nor a body, and waits for the answer with the connection
  // open: reading a body until the client closes would answer only when the read times out.
  std::string reply = raw_exchange(socket_path, "PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\n\r\n");
  EXPECT_EQ(reply.substr(0, 12), "HTTP/1.1 400") << reply;
  EXPECT_NE(reply.find("needs a JSON body"), std::string::npos) << reply;
  call("PUT", "vm.create", R"({"payload": {"kernel": "/k"}})");
  reply = raw_exchange(socket_path, "PUT /api/v1/vm.boot HTTP/1.1\r\nHost: localhost\r\n\r\n");
  EXPECT_EQ(reply.substr(0, 12), "HTTP/1.1 204") << reply;
  EXPECT_EQ(control.calls(), (std::vector<std::string>{"create", "boot"}));
}

TEST_F(ApiServer, BodiesWhoseSizeIsNotGivenUpFrontAreRefused) {
  // httplib bounds a body by its Content-Length only: a chunked or compressed one could grow without end.
  std::string chunked = raw_exchange(socket_path,
                                     "PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: "
                                     "chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n");
  EXPECT_EQ(chunked.substr(0, 12), "HTTP/1.1 411") << chunked;
  EXPECT_NE(chunked.find("Content-Length"), std::string::npos) << chunked;
  std::string gzip = raw_exchange(socket_path,
                                  "PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\nContent-Encoding: "
                                  "gzip\r\nContent-Length: 4\r\n\r\nabcd");
  EXPECT_EQ(gzip.substr(0, 12), "HTTP/1.1 415") << gzip;
  EXPECT_TRUE(control.calls().empty());
}

TEST_F(ApiServer, WhatTheHttpLayerRefusesIsSaidInJsonToo) {
  std::string reply = raw_exchange(socket_path, "GET /api/v1/" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
  EXPECT_EQ(reply.substr(0, 12), "HTTP/1.1 414") << reply.substr(0, 200);
  EXPECT_NE(reply.find("the request's path is too long"), std::string::npos) << reply.substr(0, 400);
}

TEST_F(ApiServer, JsonSentAsAFormIsToldToSayItIsJson) {
  // curl -d sends a body as application/x-www-form-urlencoded, which httplib would refuse as too large
  // past 8 KiB; multipart it would parse into parts.
  const std::string body = R"({"payload": {"kernel": "/k"}, "x": ")" + std::string(9000, 'y') + R"("})";
  for (const char* type : {"application/x-www-form-urlencoded", "multipart/form-data; boundary=b"}) {
    std::string reply = raw_exchange(socket_path, "PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\n"
                                                  "Content-Type: " + std::string(type) + "\r\nContent-Length: " +
                                                  std::to_string(body.size()) + "\r\n\r\n" + body);
    EXPECT_EQ(reply.substr(0, 12), "HTTP/1.1 415") << type << ": " << reply;
    EXPECT_NE(reply.find("Content-Type: application/json"), std::string::npos) << reply;
  }
  EXPECT_TRUE(control.calls().empty());
}

TEST_F(ApiServer, GivingTheSocketAwayNeverFollowsWhatWasPutAtItsName) {
  if (geteuid() != 0) GTEST_SKIP() << "changing a file's owner needs root";
  // The socket's directory may be the user's: they could swap the socket for a link to a file of root's.
  const std::filesystem::path kept = dir / "kept", victim = dir / "victim";
  ASSERT_EQ(link(socket_path.c_str(), kept.c_str()), 0);
  std::ofstream(victim) << "root's";
  ASSERT_EQ(unlink(socket_path.c_str()), 0);
  ASSERT_EQ(symlink(victim.c_str(), socket_path.c_str()), 0);
  server->give_to(65534, 65534);
  struct stat st {};
  ASSERT_EQ(stat(victim.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u) << "the link was followed";
  ASSERT_EQ(lstat(kept.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_uid, 65534u);
  EXPECT_EQ(st.st_gid, 65534u);
  server->stop();
  EXPECT_TRUE(std::filesystem::is_symlink(socket_path)) << "stop() removed a file that is not its socket";
}

// A server whose log lines are collected.
struct LoggedServer {
  TempDir dir;
  FakeControl control;
  std::mutex lock;
  std::vector<std::string> lines;
  api::Server server{control, dir / "s", [this](int, std::string_view line) {
                       std::lock_guard g(lock);
                       lines.emplace_back(line);
                     }};
};

TEST(ApiLog, OneLinePerRequestWithTheError) {
  LoggedServer s;
  auto& [dir, control, lock, lines, server] = s;
  EXPECT_EQ(http(dir / "s", "GET", "vmm.ping").status, 200);
  EXPECT_EQ(http(dir / "s", "PUT", "vm.boot").status, 404);
  server.stop();  // the log line precedes the reply; stop() waits for the request threads
  std::vector<std::string> expected{"GET /api/v1/vmm.ping 200", "PUT /api/v1/vm.boot 404: the VM is not created"};
  EXPECT_EQ(lines, expected);
}

// A request httplib answers by itself (it never reaches the API) is logged too, once.
TEST(ApiLog, MalformedRequestIsLoggedOnce) {
  LoggedServer s;
  auto& [dir, control, lock, lines, server] = s;
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, (dir / "s").c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
  const char junk[] = "BREW /api/v1/vmm.ping HTTP/1.1\r\n\r\n";  // no such method
  ASSERT_EQ(write(fd, junk, sizeof junk - 1), static_cast<ssize_t>(sizeof junk - 1));
  char reply[256] = {};
  ASSERT_GT(read(fd, reply, sizeof reply - 1), 0);
  close(fd);
  EXPECT_EQ(std::string(reply).substr(0, 12), "HTTP/1.1 400") << reply;
  EXPECT_EQ(http(dir / "s", "GET", "vmm.ping").status, 200);
  server.stop();
  // httplib logs its own replies after sending them, so the next request's line may come first.
  ASSERT_EQ(lines.size(), 2u) << fmt::format("{}", fmt::join(lines, " | "));
  std::sort(lines.begin(), lines.end());
  EXPECT_EQ(lines[0].substr(0, 5), "BREW ") << lines[0];
  EXPECT_NE(lines[0].find(" 400"), std::string::npos) << lines[0];
  EXPECT_EQ(lines[1], "GET /api/v1/vmm.ping 200");
}

TEST(ApiSocket, PrivateWhateverTheUmask) {
  TempDir dir;
  FakeControl control;
  mode_t old = umask(0);
  api::Server server(control, dir / "s");
  umask(old);
  struct stat st {};
  ASSERT_EQ(lstat((dir / "s").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(ApiSocket, StaleSocketIsReplaced) {
  TempDir dir;
  std::string path = dir / "s";
  // What a killed server leaves: the file, with nobody listening.
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
  close(fd);
  ASSERT_TRUE(std::filesystem::is_socket(path));
  EXPECT_EQ(http(path, "GET", "vmm.ping").status, 0);
  FakeControl control;
  api::Server server(control, path);
  EXPECT_EQ(http(path, "GET", "vmm.ping").status, 200);
}

TEST(ApiSocket, LiveSocketIsRefused) {
  TempDir dir;
  std::string path = dir / "s";
  FakeControl first, second;
  api::Server running(first, path);
  try {
    api::Server other(second, path);
    ADD_FAILURE() << "a second server took the socket";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()),
              fmt::format("--api-socket {}: a server is answering on it (another passvm, or a cloud-hypervisor?); "
                          "stop it or choose another path",
                          path));
  }
  EXPECT_EQ(http(path, "PUT", "vm.create", R"({"payload": {"kernel": "/k"}})").status, 204);
  EXPECT_EQ(first.calls().size(), 1u);
  EXPECT_TRUE(second.calls().empty());
}

// Start::on_serve (--user): a request that arrives before serve() waits in the backlog, unread, and is
// answered once serve() is called.
TEST(ApiSocket, HeldServerAnswersOnlyOnceServing) {
  TempDir dir;
  std::string path = dir / "s";
  FakeControl control;
  api::Server server(control, path, {}, api::Server::Start::on_serve);
  auto reply = std::async(std::launch::async,
                          [&] { return http(path, "PUT", "vm.create", R"({"payload": {"kernel": "/k"}})"); });
  EXPECT_EQ(reply.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout);
  EXPECT_TRUE(control.calls().empty());
  server.serve();
  EXPECT_EQ(reply.get().status, 204);
  EXPECT_EQ(control.calls().size(), 1u);
  server.serve();  // again: nothing changes
  EXPECT_EQ(http(path, "GET", "vmm.ping").status, 200);
}

// A held server that stops before serving ends at once: the waiting client's connection is closed
// unanswered, and the socket file goes.
TEST(ApiSocket, HeldServerStopsWithoutServing) {
  TempDir dir;
  std::string path = dir / "s";
  FakeControl control;
  int fd = -1;
  {
    api::Server server(control, path, {}, api::Server::Start::on_serve);
    fd = api::connect_unix(path);
    ASSERT_GE(fd, 0);
    std::string request = "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n";
    ASSERT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  char buf[64];
  errno = 0;
  ssize_t n = read(fd, buf, sizeof buf);
  EXPECT_LE(n, 0);
  EXPECT_NE(errno, EAGAIN) << "the connection was left open";
  close(fd);
  EXPECT_TRUE(control.calls().empty());
}

TEST(ApiSocket, ClearErrorsForPathsThatCannotWork) {
  TempDir dir;
  FakeControl control;
  auto error_for = [&](const std::string& path) -> std::string {
    try {
      api::Server s(control, path);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "no error";
  };
  std::string missing = dir / "no/such/dir";
  EXPECT_EQ(error_for(missing + "/api.sock"),
            fmt::format("--api-socket {0}/api.sock: the directory {0} does not exist: create it (mkdir -p {0}) or "
                        "choose another path",
                        missing));
  std::string file = dir / "file";
  std::ofstream(file) << "precious";
  EXPECT_EQ(error_for(file),
            fmt::format("--api-socket {}: the file exists and is not a socket; remove it or choose another path",
                        file));
  EXPECT_EQ(std::ifstream(file).rdbuf()->sgetc(), 'p');  // untouched
  std::string longer = dir / std::string(120, 'x');
  EXPECT_NE(error_for(longer).find("too long for a unix socket path"), std::string::npos);
  EXPECT_NE(error_for(file + "/api.sock").find("is not a directory"), std::string::npos);
  EXPECT_NE(error_for("").find("empty path"), std::string::npos);
}

// Kata Containers' clh driver, replayed from testdata/kata-clh by replay.py (see its README.md).
class ApiReplay : public ServerFixture {
 protected:
  void SetUp() override {
    if (std::system("python3 -c 'import http.client' >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
    ServerFixture::SetUp();
  }
  int replay(const std::string& sequence, std::string& output) {
    std::string command = fmt::format(
        "python3 {0}/replay.py --socket {1} --set KERNEL=/boot/vmlinuz --set INITRD=/boot/initrd.img "
        "--set CMDLINE=console=ttyS0 --set DEVICE=0000:00:04.0 --set IMAGE=/images/kata.img "
        "--set SANDBOX=3f2a {2} 2>&1",
        PASSVM_API_SOURCE_DIR, socket_path, sequence);
    FILE* p = popen(command.c_str(), "r");
    if (!p) return -1;
    char buf[512];
    while (fgets(buf, sizeof buf, p)) output += buf;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
};

TEST_F(ApiReplay, KataSequence) {
  std::string out;
  EXPECT_EQ(replay(PASSVM_API_SOURCE_DIR "/testdata/kata-clh/sequence.json", out), 0) << out;
  std::vector<std::string> expected{"create", "boot", "add_device 0000:00:04.0 ", "remove_device _vfio0",
                                    "pause", "resume", "shutdown_vmm"};
  EXPECT_EQ(control.calls(), expected) << out;
  EXPECT_EQ(control.config().kernel, "/boot/vmlinuz");
  EXPECT_EQ(control.config().initrd, "/boot/initrd.img");
}

TEST_F(ApiReplay, KataColdPlugSequence) {
  std::string out;
  EXPECT_EQ(replay(PASSVM_API_SOURCE_DIR "/testdata/kata-clh/sequence-cold-plug.json", out), 0) << out;
  std::vector<std::string> expected{"create", "boot", "remove_device vfio-0fd4a1c3e2b9d7f00", "shutdown_vmm"};
  EXPECT_EQ(control.calls(), expected) << out;
  ASSERT_EQ(control.config().slots.size(), 0u);
}

TEST_F(ApiReplay, WhatKataSendsAndPassvmRefuses) {
  std::string out;
  EXPECT_EQ(replay(PASSVM_API_SOURCE_DIR "/testdata/kata-clh/refused.json", out), 0) << out;
  EXPECT_TRUE(control.calls().empty()) << out;
}

TEST_F(ApiReplay, AMismatchFailsTheReplay) {
  std::string sequence = dir / "wrong.json";
  std::ofstream(sequence) << R"([{"method": "GET", "path": "/api/v1/vmm.ping", "expect_status": 200},
                                 {"method": "GET", "path": "/api/v1/vm.info", "expect_status": 200}])";
  std::string out;
  EXPECT_EQ(replay(sequence, out), 1) << out;
  EXPECT_NE(out.find("404"), std::string::npos) << out;
  std::ofstream(sequence) << R"([{"method": "PUT", "path": "/api/v1/vm.create", "body": {"payload": {"kernel": "/k"}},
                                  "expect_status": 204},
                                 {"method": "GET", "path": "/api/v1/vm.info", "expect_status": 200,
                                  "expect": {"state": "Running"}}])";
  out.clear();
  EXPECT_EQ(replay(sequence, out), 1) << out;
  EXPECT_NE(out.find("Created"), std::string::npos) << out;
}

}  // namespace
}  // namespace passvm::testing
