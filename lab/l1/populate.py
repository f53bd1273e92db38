#!/usr/bin/python3
# What allocating guest RAM costs L1 itself, with no VMM around: the floor for a VMM's allocation.
#
#   populate.py --mib N [--threads T] [--result CHECK]
#
# Maps N MiB of anonymous memory 2 MiB aligned and marked for transparent huge pages, then T threads
# (default: one per CPU this process may run on, each pinned to its CPU) fault it in with
# MADV_POPULATE_WRITE in 64 MiB chunks taken in turn, as passvm's workers do (memory/guest_memory.cpp),
# and the same threads write it all once more, now that it is allocated. Prints
# {"mib", "threads", "alloc_ms", "alloc_gib_s", "write_ms", "write_gib_s", "thp_mib"} as JSON; with
# --result CHECK, as the lab's result line for CHECK. alloc is the kernel's page allocation and zeroing,
# write the plain memory bandwidth; thp_mib says how much of it the kernel gave as huge pages.
# bench-large runs it before each passvm run, on memory washed the same way as for the VMMs.
import argparse, ctypes, json, mmap, os, sys, threading, time

MADV_HUGEPAGE, MADV_POPULATE_WRITE = 14, 23
CHUNK, HUGE = 64 << 20, 2 << 20

ap = argparse.ArgumentParser()
ap.add_argument("--mib", type=int, required=True)
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--result")
args = ap.parse_args()

libc = ctypes.CDLL(None, use_errno=True)  # calls through ctypes release the GIL: the threads run side by side
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
cpus = sorted(os.sched_getaffinity(0))
threads = args.threads or len(cpus)
size = args.mib << 20
area = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
base = ctypes.addressof(ctypes.c_char.from_buffer(area))
start = (base + HUGE - 1) & ~(HUGE - 1)
error = []


def result(ok, figures, detail=""):
    if args.result:
        print("LABRESULT " + json.dumps({"scenario": os.environ.get("LAB_SCENARIO", "?"), "check": args.result,
                                         "pass": ok, "figures": figures, "detail": detail}), flush=True)
    else:
        print(json.dumps({"ok": ok, **figures, **({"detail": detail} if detail else {})}), flush=True)
    sys.exit(0 if ok else 1)


if libc.madvise(start, size, MADV_HUGEPAGE) != 0:
    result(False, {}, f"madvise(MADV_HUGEPAGE): {os.strerror(ctypes.get_errno())}")


def timed(work):
    """Runs work(offset, length) over the chunks from `threads` pinned threads; returns the seconds."""
    chunks, lock, state = (size + CHUNK - 1) // CHUNK, threading.Lock(), {"next": 0}

    def worker(i):
        os.sched_setaffinity(0, {cpus[i % len(cpus)]})  # this thread only (Linux)
        while not error:
            with lock:
                c = state["next"]
                state["next"] += 1
            if c >= chunks:
                return
            off = c * CHUNK
            work(start + off, min(CHUNK, size - off))

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    t0 = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.monotonic() - t0


def populate(at, length):
    if libc.madvise(at, length, MADV_POPULATE_WRITE) != 0:
        error.append(f"madvise(MADV_POPULATE_WRITE): {os.strerror(ctypes.get_errno())}")


alloc_s = timed(populate)
if error:
    result(False, {"mib": args.mib, "threads": threads}, error[0])
thp_kb = 0
for line in open("/proc/self/smaps_rollup"):
    if line.startswith("AnonHugePages:"):
        thp_kb = int(line.split()[1])
write_s = timed(lambda at, length: ctypes.memset(at, 1, length))
gib = size / (1 << 30)
result(True, {"mib": args.mib, "threads": threads, "alloc_ms": round(alloc_s * 1000), "alloc_gib_s": round(gib / alloc_s, 2),
              "write_ms": round(write_s * 1000), "write_gib_s": round(gib / write_s, 2), "thp_mib": thp_kb >> 10})
