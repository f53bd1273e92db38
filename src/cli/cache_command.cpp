#include "cli/cache_command.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

// GCC 12 sees a null dereference in CLI11's split() once it is inlined here (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <CLI/CLI.hpp>
#pragma GCC diagnostic pop
#include <chrono>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "base/eprint.h"
#include "boot/kernel_cache.h"
#include "boot/linux_boot.h"

namespace passvm::cli {

namespace {

namespace fs = std::filesystem;

// The directory a command acts on: the shared one with --shared, else the user's own.
std::string target_dir(bool shared) {
  if (shared) return boot::kSharedCacheDir;
  std::string dir = boot::KernelCache::default_dir();
  if (dir.empty())
    throw std::runtime_error(getenv("PASSVM_CACHE_DIR") ? "PASSVM_CACHE_DIR=off disables the cache: unset it"
                                                        : "no cache directory: set PASSVM_CACHE_DIR or HOME");
  return dir;
}

void list_dir(const std::string& title, const std::string& dir) {
  std::error_code ec;
  std::vector<fs::directory_entry> entries;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (boot::KernelCache::is_entry(e.path().filename().string())) entries.push_back(e);
  fmt::print("{} ({}): {}\n", title, dir, entries.empty() ? "empty" : fmt::format("{} kernels", entries.size()));
  for (const auto& e : entries)
    fmt::print("  {}  {} MiB\n", e.path().filename().string(), (e.file_size(ec) + (1 << 20) - 1) >> 20);
}

}  // namespace

int cache_main(int argc, char** argv) {
  CLI::App app{"the cache of unpacked kernels: a kernel's first boot unpacks it, later boots stream it from here",
               "passvm cache"};
  app.require_subcommand(1);
  bool shared = false;
  std::vector<std::string> kernels;
  auto* add = app.add_subcommand("add", "unpack kernels into the cache now, so that their first boot is fast");
  add->add_option("KERNEL", kernels, "bzImage files")->required();
  add->add_flag("--shared", shared, fmt::format("into {}, which every user's passvm reads (as root)",
                                                boot::kSharedCacheDir));
  auto* list = app.add_subcommand("list", "what the own and the shared cache hold");
  auto* remove = app.add_subcommand("remove", "drop kernels' entries from the cache");
  bool all = false;
  remove->add_option("KERNEL", kernels, "bzImage files whose entries go");
  remove->add_flag("--all", all, "every entry");
  remove->add_flag("--shared", shared, fmt::format("from {}", boot::kSharedCacheDir));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int status = app.exit(e);  // prints the help or the error
    return status == 0 ? 0 : 2;
  }
  try {
    if (*list) {
      auto dirs = boot::KernelCache::default_dirs();
      if (!dirs.own.empty()) list_dir("own cache", dirs.own);
      if (!dirs.shared.empty()) list_dir("shared cache", dirs.shared);
      return 0;
    }
    const std::string dir = target_dir(shared);
    if (*add) {
      for (const auto& k : kernels) {
        auto start = std::chrono::steady_clock::now();
        std::string path = boot::KernelCache::add(dir, boot::read_boot_file(k, "kernel"), k);
        fmt::print("{}: {} ({} MiB, {:.1f} s)\n", k, path, (fs::file_size(path) + (1 << 20) - 1) >> 20,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
      return 0;
    }
    if (all == !kernels.empty()) {
      eprint("passvm cache remove: give either KERNEL files or --all\n");
      return 2;
    }
    std::error_code ec;
    if (all) {
      for (const auto& e : fs::directory_iterator(dir, ec))
        if (boot::KernelCache::is_entry(e.path().filename().string()) ||
            boot::KernelCache::is_index(e.path().filename().string()))
          fs::remove(e.path(), ec);
      return 0;
    }
    for (const auto& k : kernels) {
      std::string path = boot::KernelCache(boot::CacheDirs{dir}, boot::read_boot_file(k, "kernel")).path();
      if (!fs::remove(path, ec)) fmt::print("{}: not in {}\n", k, dir);
    }
    return 0;
  } catch (const std::exception& e) {
    eprint("passvm cache: {}\n", e.what());
    return 1;
  }
}

}  // namespace passvm::cli
