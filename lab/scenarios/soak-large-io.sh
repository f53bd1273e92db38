# Soak of the data path in a large guest: an 8 GiB L2 with the NVMe passed through, booted again and again,
# QEMU and passvm in turn, each boot running the nvme check (16 MiB, five rounds), nvmebig (64 MiB, three
# rounds) and nvmerand (4 KiB random reads). One boot's five rounds vary by a factor of two or more under
# TCG, so a difference between the VMMs means something only over many boots: large-io.summary gives, per
# VMM and check, the median over boots of each boot's median, the lowest and the highest, and the ratio.
# Not part of the test suite (figures are not asserted). Env: SOAK_LARGE_BOOTS (per VMM, default 4),
# SOAK_LARGE_MEM_MB (default 8192).
# lab-l1: memory=12288 cpus=1
# lab-expect: large-io.summary
# lab-timeout: 5400

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary large-io.summary
BOOTS=${SOAK_LARGE_BOOTS:-4}
MB=${SOAK_LARGE_MEM_MB:-8192}
[[ $BOOTS =~ ^[0-9]+$ && $BOOTS -ge 1 ]] || {
    result large-io.summary fail detail="SOAK_LARGE_BOOTS='$BOOTS': give the boots per VMM, 1 or more"; exit 1; }
[[ $MB =~ ^[0-9]+$ && $MB -ge 256 ]] || {
    result large-io.summary fail detail="SOAK_LARGE_MEM_MB='$MB': give L2's RAM in MiB, 256 or more"; exit 1; }
APPEND="$(l2_append mem,nvme,nvmebig,nvmerand lab.mem_mb=$MB)"
QEMU=(qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m "$MB" -smp 2 -nodefaults -nographic -no-reboot
      -serial stdio -monitor none -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$APPEND"
      -device vfio-pci,host=0000:00:03.0)
PV=("$PASSVM" -c 2 -m "${MB}M" -s 0,hostbridge -s 3,passthru,0000:00:03.0 -l com1,stdio --stats
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$APPEND" large)

export PASSVM_CACHE_DIR=$(mktemp -d /tmp/passvm-large-cache.XXXXXX)
export RUN_L2_WASH=1
bind_vfio 0000:00:03.0 || { result large-io.summary fail detail="cannot bind 0000:00:03.0 to vfio-pci"; exit 1; }
for i in $(seq 1 "$BOOTS"); do
    # Alternating which VMM goes first, so that neither always follows the other.
    if (( i % 2 )); then
        run_l2 "qemu$i" --timeout 1500 -- "${QEMU[@]}"
        run_l2 "pv$i" --timeout 1500 -- "${PV[@]}"
    else
        run_l2 "pv$i" --timeout 1500 -- "${PV[@]}"
        run_l2 "qemu$i" --timeout 1500 -- "${QEMU[@]}"
    fi
done
rm -rf "$PASSVM_CACHE_DIR"

/usr/bin/python3 - "$LAB_OUT" "$BOOTS" <<'PY'
import json, os, statistics, sys
out, boots = sys.argv[1], int(sys.argv[2])
# The figure per check: write+read time for the bulk checks (lower is better), IOPS for nvmerand (higher).
checks = {"nvme": "total_ms", "nvmebig": "total_ms", "nvmerand": "iops"}
per = {}          # (vmm, check) -> [per-boot figure]
failed = []
for vmm, prefix in (("qemu", "qemu"), ("passvm", "pv")):
    for i in range(1, boots + 1):
        try:
            s = json.load(open(os.path.join(out, f"{prefix}{i}.summary.json")))
        except (OSError, ValueError):
            failed.append(f"{prefix}{i}: no summary")
            continue
        got = s.get("checks", {})
        if not s.get("pass"):
            failed.append(f"{prefix}{i}")
        for check, fig in checks.items():
            if fig not in got.get(check, {}):
                failed.append(f"{prefix}{i}.{check}")
                continue
            per.setdefault((vmm, check), []).append(float(got[check][fig]))
figs, lines = {}, []
for check, fig in checks.items():
    q, p = per.get(("qemu", check), []), per.get(("passvm", check), [])
    if not q or not p:
        continue
    mq, mp = statistics.median(q), statistics.median(p)
    ratio = mp / mq if mq else 0
    figs[f"{check}_{fig}_passvm"] = round(mp, 2)
    figs[f"{check}_{fig}_qemu"] = round(mq, 2)
    figs[f"{check}_ratio"] = round(ratio, 3)
    lines.append(f"{check} {fig}: passvm {mp:.1f} (boots {min(p):.1f}-{max(p):.1f}: "
                 f"{', '.join(f'{x:.1f}' for x in p)}), QEMU {mq:.1f} (boots {min(q):.1f}-{max(q):.1f}: "
                 f"{', '.join(f'{x:.1f}' for x in q)}), passvm/QEMU {ratio:.2f}")
print("\n".join(lines))
verdict = "fail" if failed or not figs else "pass"
detail = ("failed: " + " ".join(failed)) if failed else ""
print("LABRESULT " + json.dumps({"scenario": os.environ.get("LAB_SCENARIO", "?"), "check": "large-io.summary", "pass": verdict == "pass",
                                 "figures": dict(figs, boots=boots), "detail": detail}))
PY
