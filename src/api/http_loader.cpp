// api: finding and loading passvm-http.so (see http.h).
#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "api/http.h"

#ifndef PASSVM_HTTP_MODULE_DIR
#define PASSVM_HTTP_MODULE_DIR "../lib/passvm"
#endif

namespace passvm::api::http {

namespace {

constexpr const char* kFile = "passvm-http.so";

std::mutex load_lock;
const Module* loaded = nullptr;

std::filesystem::path binary_dir() {
  std::error_code ec;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw std::runtime_error(fmt::format("cannot find passvm's own binary (/proc/self/exe): {}", ec.message()));
  return exe.parent_path();
}

// Loads `file`, or throws saying why it is no usable module. Caller holds load_lock.
const Module& open_module(const std::filesystem::path& file, const std::string& purpose) {
  auto refuse = [&](const std::string& why) {
    return std::runtime_error(fmt::format("{} needs passvm's HTTP module, and {} {}: reinstall passvm "
                                          "(cmake --install), or put the {} built with this passvm there",
                                          purpose, file.string(), why, kFile));
  };
  // RTLD_NOW: a module that does not fit this process fails here, not at its first request.
  void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) throw refuse(fmt::format("does not load ({})", dlerror()));
  auto entry = reinterpret_cast<const Module* (*)()>(dlsym(handle, "passvm_http_module"));
  const Module* m = entry ? entry() : nullptr;
  if (!m || m->abi != kAbi) {
    dlclose(handle);
    throw refuse(m ? fmt::format("is from another build of passvm (interface {}, this passvm's is {})", m->abi, kAbi)
                   : std::string("is not passvm's HTTP module"));
  }
  loaded = m;  // never unloaded (http.h)
  return *m;
}

}  // namespace

const Module& module(const std::string& purpose) {
  std::lock_guard g(load_lock);
  if (loaded) return *loaded;
  std::filesystem::path dir = binary_dir();
  std::vector<std::filesystem::path> places{dir / kFile, (dir / PASSVM_HTTP_MODULE_DIR).lexically_normal() / kFile};
  for (const auto& p : places) {
    std::error_code ec;
    if (std::filesystem::exists(p, ec)) return open_module(p, purpose);
  }
  throw std::runtime_error(fmt::format("{} needs passvm's HTTP module, {}, which is neither beside passvm ({}) nor in "
                                       "{}: install passvm with cmake --install (it puts the module there), or copy "
                                       "{} from the build directory beside the passvm binary",
                                       purpose, kFile, dir.string(), places[1].parent_path().string(), kFile));
}

void use_module_file(const std::string& path) {
  std::lock_guard g(load_lock);
  if (!loaded) open_module(path, "this test");
}

}  // namespace passvm::api::http
