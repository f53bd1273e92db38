"""Kernel text addresses named 'symbol+offset' from a kallsyms table: L1's /proc/kallsyms, or the copy
lab/run keeps beside a run's logs. L1 and L2 boot the same kernel with nokaslr, so L1's table names L2's
addresses as well. Used by run_l2.py in L1 (where a guest triple-faulted) and by lab/run on the host
(where a stuck L1's CPUs were)."""
import bisect


def symbolizer(path):
    """A function from an address to 'symbol+0xoff' ('symbol [module]+0xoff' in a module), or '' when the
    address is more than 64 KiB past the nearest text symbol below it or the table cannot be read."""
    syms = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tTwW":
                    syms.append((int(parts[0], 16), parts[2] + (" " + parts[3] if len(parts) > 3 else "")))
    except (OSError, ValueError):
        return lambda addr: ""
    syms.sort()
    addrs = [a for a, _ in syms]

    def symbolize(addr):
        i = bisect.bisect_right(addrs, addr) - 1
        return f"{syms[i][1]}+{addr - addrs[i]:#x}" if i >= 0 and addr - addrs[i] < 0x10000 else ""
    return symbolize
