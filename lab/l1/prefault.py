#!/usr/bin/python3
# Writes L1's free memory once (MemFree less 384 MiB, so that nothing cached is evicted; two processes,
# MAP_POPULATE, then freed) and prints
# {"ok":..,"mib":..,"seconds":..} as JSON; with --result CHECK, as the lab's result line for CHECK.
#
# Why: writing memory in L1 costs more than on any real host in two cases, and both made a VMM run's
# figures depend on what ran before it.
# - L0 QEMU backs L1's RAM only when L1 first writes it, at seconds per GiB under TCG: a 1 GiB guest
#   took 6 s more to allocate in the first run than in later ones.
# - Memory an L2 guest ran code from is slow to write for the next process that gets it (L0's TCG
#   drops the code it translated from each page written): a cached kernel load took about 300-400 ms on
#   such pages against 40-55 ms on pages written since.
# bench-large runs this once (check l1.prefault); lib.sh's run_l2 runs it before each VMM with RUN_L2_WASH=1.
import json, mmap, os, sys, time

free = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemFree:")) << 10
half = max(0, free - (384 << 20)) // 2 & ~0xfffff
t0, kids = time.monotonic(), []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        try:
            if half:
                mmap.mmap(-1, half, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE).close()
            os._exit(0)
        except BaseException:
            os._exit(1)
    kids.append(pid)
ok = all(os.waitpid(p, 0)[1] == 0 for p in kids) and half > 0
fig = {"mib": 2 * half >> 20, "seconds": round(time.monotonic() - t0, 1)}
if len(sys.argv) == 3 and sys.argv[1] == "--result":
    print("LABRESULT " + json.dumps({"scenario": os.environ.get("LAB_SCENARIO", "?"), "check": sys.argv[2], "pass": ok,
          "figures": fig, "detail": "" if ok else "no free memory to write" if half == 0 else "a process writing L1's free memory failed (out of memory?)"}),
          flush=True)
else:
    print(json.dumps({"ok": ok, **fig}), flush=True)
sys.exit(0 if ok else 1)
