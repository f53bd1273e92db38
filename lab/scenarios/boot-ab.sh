# A/B of two passvm binaries on the same L2 boot: $PASSVM (A) and $PASSVM_B (B, given with
# lab/run --env PASSVM_B=PATH), booted alternately A B B A A B ... (AB_ROUNDS pairs, default 3) with the
# kernel cached, so that a drift of the machine's speed weighs on both alike. AB_APPEND adds to L2's
# command line (quiet, say); AB_ARGS adds to both passvm command lines. AB_FIRST=1 makes every boot a
# kernel's first (an empty kernel cache each time: unpacked, and its cache entry written). AB_PT=1 passes
# the NVMe through in every boot (bound to vfio-pci first) and has L2 check it (its nvme, nvmebig and
# nvmerand checks), printing their figures too. Prints each
# boot's time to L2 init and the time passvm took to find the kernel's cache entry and to place the kernel
# in guest RAM (-v's "bzImage key N ms, kernel N ms") and from its start to its vCPUs ready (process start and
# setup: the time of -v's "setup took" line),
# with medians and their ratio B/A. For a change whose gain is smaller than the noise between two lab
# runs. Not in the suite.
# lab-expect: ab-warm.vmm ab-warm-b.vmm ab-compare
# lab-timeout: 2400

if [[ -z $PASSVM || ! -x $PASSVM || -z ${PASSVM_B:-} || ! -x $PASSVM_B ]]; then
    result ab-compare fail detail="give both binaries: lab/run --passvm A --env PASSVM_B=B boot-ab"
    exit 1
fi
ROUNDS=${AB_ROUNDS:-3}
# Every run finds L1's free memory written just before it, whatever ran before (lib.sh's run_l2, RUN_L2_WASH).
export RUN_L2_WASH=1
# shellcheck disable=SC2206
EXTRA=(${AB_ARGS:-})
ab_boot ab-compare || exit 1
pv() {
    local bin=$1 name=$2
    if [[ ${AB_FIRST:-} == 1 ]]; then rm -rf "${PASSVM_CACHE_DIR:?}"/*; fi
    run_l2 "$name" --timeout 480 -- "$bin" -c 2 -m 512M -s 0,hostbridge -l com1,stdio --stats -v \
        --kernel "$L2_KERNEL" --initrd "$L2_INITRD" "${EXTRA[@]}" --append "$BOOT" ab
}
export PASSVM_CACHE_DIR=$(mktemp -d /tmp/passvm-ab-cache.XXXXXX)
pv "$PASSVM" ab-warm  # fill the kernel cache for both binaries; not counted
pv "$PASSVM_B" ab-warm-b
names=()
for ((i = 1; i <= ROUNDS; i++)); do
    if ((i % 2)); then order=(a b); else order=(b a); fi
    for w in "${order[@]}"; do
        if [[ $w == a ]]; then pv "$PASSVM" "ab-a$i"; else pv "$PASSVM_B" "ab-b$i"; fi
        names+=("ab-$w$i")
    done
done
rm -rf "$PASSVM_CACHE_DIR"
/usr/bin/python3 - "$LAB_OUT" "$LAB_SCENARIO" "${names[@]}" <<'PY'
import json, re, statistics, sys
out, scenario, names = sys.argv[1], sys.argv[2], sys.argv[3:]
t = {"a": [], "b": []}
kernel = {"a": [], "b": []}
key = {"a": [], "b": []}
ready = {"a": [], "b": []}  # ms from the VMM's start to its vCPUs ready (process start and setup)
nvme = {"a": [], "b": []}  # with AB_PT: ms for 64 MiB written and read in 1 MiB requests
iops = {"a": [], "b": []}  # with AB_PT: 4 KiB random reads per second
bad = []
for n in names:
    try:
        s = json.load(open(f"{out}/{n}.summary.json"))
        t[n[3]].append(s["vmm"]["vmm_start_to_l2_init_ms"] / 1000)
        if "nvmebig" in s["checks"]:
            nvme[n[3]].append(s["checks"]["nvmebig"]["total_ms"])
        if "nvmerand" in s["checks"]:
            iops[n[3]].append(s["checks"]["nvmerand"]["iops"])
        console = open(f"{out}/{n}.console", errors="replace").read()
        r = re.search(r"^ *(\d+) passvm: .*setup took", console, re.M)
        if r:
            ready[n[3]].append(int(r.group(1)))
        m = re.search(r"bzImage key ([\d.]+) ms, kernel ([\d.]+) ms", console)
        if m:
            key[n[3]].append(float(m.group(1)))
            kernel[n[3]].append(float(m.group(2)))
    except (OSError, ValueError, KeyError, TypeError):
        bad.append(n)
fig = {k: " ".join(f"{x:.2f}" for x in v) for k, v in t.items()}
fig.update({f"kernel_ms_{k}": " ".join(f"{x:.0f}" for x in v) for k, v in kernel.items()})
fig.update({f"key_ms_{k}": " ".join(f"{x:.1f}" for x in v) for k, v in key.items()})
if t["a"] and t["b"]:
    ma, mb = statistics.median(t["a"]), statistics.median(t["b"])
    fig.update(median_a_s=round(ma, 2), median_b_s=round(mb, 2), ratio_b_a=round(mb / ma, 3))
if ready["a"] and ready["b"]:
    ra, rb = statistics.median(ready["a"]), statistics.median(ready["b"])
    fig.update(ready_ms_a=" ".join(map(str, ready["a"])), ready_ms_b=" ".join(map(str, ready["b"])),
               ready_median_a_ms=round(ra), ready_median_b_ms=round(rb))
for label, got in (("nvme64_ms", nvme), ("iops", iops)):
    if got["a"] and got["b"]:
        fig.update({f"{label}_a": " ".join(f"{x:.0f}" for x in got["a"]),
                    f"{label}_b": " ".join(f"{x:.0f}" for x in got["b"]),
                    f"{label}_median_a": round(statistics.median(got["a"])),
                    f"{label}_median_b": round(statistics.median(got["b"]))})
if kernel["a"] and kernel["b"]:
    ka, kb = statistics.median(kernel["a"]), statistics.median(kernel["b"])
    fig.update(kernel_median_a_ms=round(ka), kernel_median_b_ms=round(kb), kernel_ratio_b_a=round(kb / ka, 3))
print("LABRESULT " + json.dumps({"scenario": scenario, "check": "ab-compare", "pass": not bad, "figures": fig,
      "detail": f"no figure from {', '.join(bad)}" if bad else ""}, separators=(",", ":")), flush=True)
PY
