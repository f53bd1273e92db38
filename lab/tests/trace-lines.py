#!/usr/bin/env python3
"""trace-lines.py: run_l2.py's reading of L1's ftrace text (trace_events and the reports built on it),
on lines in the format of Debian's 6.1 kernel, which L1 runs. Exit 0 when every check passes."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scenarios"))
import run_l2  # noqa: E402

TEXT = """# tracer: nop
#
#                                _-----=> irqs-off/BH-disabled
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
 qemu-system-x86-1234    [000] d..1.   123.456789: kvm_entry: vcpu 0, rip 0xffffffff81000000
 CPU 0/KVM-4567    [001] .....  124.000001: kvm_exit: vcpu 0 reason shutdown rip 0xffffffff8123abcd info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000
CPU:1 [LOST 12 EVENTS]
 <...>-99 [000] d..2.    12.000001: kvm_emulate_insn: 0:ffffffff81234567:0f 01 d9 (prot64)
 <...>-99 [000] d..2.    12.000002: kvm_inj_exception: #PF (0x2)
 <...>-99 [000] d..2.    12.000003: kvm_emulate_insn: 0:ffffffff81234567:0f 01 d9 (prot64)
 <...>-99 [000] d..2.    12.000004: kvm_inj_exception: #PF (0x2)
 other-vmm-7 [001] d..2.    12.000005: kvm_inj_exception: #GP (0x0)
"""

failures = []


def check(name, got, want):
    if got != want:
        failures.append(f"{name}: got {got!r}, want {want!r}")


events = list(run_l2.trace_events(TEXT, {"kvm_entry", "kvm_exit"}))
check("entry and exit, comm with spaces and dashes", [(e[0], e[1], e[2]) for e in events],
      [(1234, 123.456789, "kvm_entry"), (4567, 124.000001, "kvm_exit")])
check("fields", events[0][3], "vcpu 0, rip 0xffffffff81000000")
check("only the events asked for", [e[2] for e in run_l2.trace_events(TEXT, {"kvm_inj_exception"})],
      ["kvm_inj_exception"] * 3)

exit_fields = events[1][3]
m = run_l2.ShutdownTrace.EXIT.match(exit_fields)
check("kvm_exit's vcpu, reason and rip", m and m.groups(), ("0", "shutdown", "ffffffff8123abcd"))

with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "trace"), "w") as f:
        f.write(TEXT)
    run_l2.EMULATE_DIR = d
    run_l2.SHUTDOWNS.symbolize = lambda addr: "fn+0x7" if addr == 0xffffffff81234567 else None
    report = run_l2.emulation_report(since=12.0, tids={99}, last=2)
    check("emulation report of the VMM's thread only", report, [
        "  L1 KVM emulation trace (the ring keeps the last few thousand events), most frequent first:",
        "    2 x emulated rip 0xffffffff81234567 (fn+0x7) bytes 0f 01 d9 (prot64)",
        "    2 x injected #PF (0x2)",
        "  last: 12.000003 emulated rip 0xffffffff81234567 (fn+0x7) bytes 0f 01 d9 (prot64)",
        "  last: 12.000004 injected #PF (0x2)",
    ])
    check("nothing after the window", run_l2.emulation_report(since=13.0, tids={99}), [])

for f in failures:
    print(f"trace-lines: {f}")
print(f"trace-lines: {'FAILED' if failures else 'all checks passed'}")
sys.exit(1 if failures else 0)
