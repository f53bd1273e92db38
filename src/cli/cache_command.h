// cli/cache_command.h: `passvm cache`, the unpacked-kernel cache from the command line.
//
// passvm add KERNEL unpacks a bzImage into the cache ahead of its first boot
// (boot/kernel_cache.h), so that no VM start pays for it: into the user's own
// cache, or with --shared into /var/cache/passvm, which every user's passvm
// reads (a kernel package hook or a system service runs it as root). list shows
// what both caches hold; remove drops one kernel's entry or, with --all, every one.
#pragma once

namespace passvm::cli {

// argv[0] is "passvm cache"; returns the exit status: 0, 1 when a command failed, 2 for a usage error.
int cache_main(int argc, char** argv);

}  // namespace passvm::cli
