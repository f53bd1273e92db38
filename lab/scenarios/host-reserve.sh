# Host device reservation on a real (emulated) passthrough host: `passvm-host reserve`
# takes L1's nvme controller 00:03.0 from the nvme driver and binds it to vfio-pci, with
# /dev/vfio/GROUP present; `release` gives it back to nvme; `list --json` and `check`
# agree with sysfs before and after; a disk in use by the host is refused; bad input
# fails with one clear line. A device parked on pci-stub by another tool goes back to pci-stub
# with its driver_override, which pci-stub needs to bind it.
# lab-expect: host.binary host.list host.check host.reserve host.reserve_list host.release host.refuse host.stub host.errors
# lab-timeout: 180

source "$LAB_DIR/scenarios/host-lib.sh"
BDF=0000:00:03.0
OUT=$LAB_OUT

HOST=$(host_binary)
if [[ -z $HOST ]]; then
    result host.binary fail detail="no passvm-host found: build it (cmake --build BUILD --target passvm-host) or set PASSVM_HOST"
    exit 1
fi
result host.binary pass path="$HOST"

# Another scenario of this boot (host-bootclaim's early hook) may have claimed the device:
# start from the state the scenario is about, nvme owning it.
if [[ $(bdf_driver $BDF) != nvme ]]; then
    echo "host-reserve: $BDF is on '$(bdf_driver $BDF)', giving it back to nvme first"
    "$HOST" release $BDF || unbind_vfio $BDF
    for _ in $(seq 30); do [[ $(bdf_driver $BDF) == nvme ]] && break; sleep 0.2; done
fi

# --- list agrees with sysfs while nvme owns the device
group=$(sysfs_group $BDF)
"$HOST" list --json > "$OUT/list-before.json" 2> "$OUT/list-before.err"
rc=$?
for dev in /sys/bus/pci/devices/*; do
    bdf=$(basename "$dev")
    echo "$bdf $(bdf_driver "$bdf") $(basename "$(readlink "$dev/iommu_group")")"
done > "$OUT/sysfs-before.txt"
mismatch=$(/usr/bin/python3 - "$OUT/list-before.json" "$OUT/sysfs-before.txt" $BDF <<'PY'
import json, sys
listed = {d["address"]: d for d in json.load(open(sys.argv[1]))}
problems = []
rows = [l.split() for l in open(sys.argv[2]) if l.strip()]
for row in rows:
    bdf = row[0]
    driver = row[1] if len(row) == 3 else None
    group = int(row[-1]) if len(row) > 1 and row[-1].isdigit() else None
    d = listed.get(bdf)
    if d is None:
        problems.append(f"{bdf} missing")
    elif d["driver"] != driver or d["iommu_group"] != group:
        problems.append(f"{bdf}: listed {d['driver']}/{d['iommu_group']}, sysfs {driver}/{group}")
if len(listed) != len(rows):
    problems.append(f"{len(listed)} listed, {len(rows)} in sysfs")
if listed.get(sys.argv[3], {}).get("reserved") is not False:
    problems.append(f"{sys.argv[3]} not listed as unreserved")
print("; ".join(problems))
PY
)
count=$(wc -l < "$OUT/sysfs-before.txt")
if [[ $rc == 0 && -z $mismatch && $(bdf_driver $BDF) == nvme ]]; then
    result host.list pass devices=$count nvme_group=$group
else
    result host.list fail detail="rc=$rc driver=$(bdf_driver $BDF) $mismatch $(head -c 300 "$OUT/list-before.err")"
fi

# --- check agrees with the host: IOMMU, remapping, vfio modules present in this lab
"$HOST" check --json > "$OUT/check-before.json" 2>&1
bad=""
[[ $(check_verdict "$OUT/check-before.json" kvm) == pass ]] || bad+="kvm "
if [[ -n $(ls /sys/class/iommu) ]]; then want=pass; else want=fail; fi
[[ $(check_verdict "$OUT/check-before.json" iommu) == "$want" ]] || bad+="iommu "
[[ $(check_verdict "$OUT/check-before.json" "iommu groups") == pass ]] || bad+="groups "
[[ $(check_verdict "$OUT/check-before.json" "interrupt remapping") == pass ]] || bad+="intremap "
[[ $(check_verdict "$OUT/check-before.json" vfio_pci) == pass ]] || bad+="vfio_pci "
if [[ -z $bad ]]; then
    result host.check pass iommu_units=$(ls /sys/class/iommu | wc -l)
else
    result host.check fail detail="unexpected verdicts for: $bad(see check-before.json)"
fi

# --- reserve: nvme -> vfio-pci, /dev/vfio/GROUP, previous driver remembered
"$HOST" reserve $BDF > "$OUT/reserve.out" 2>&1
rc=$?
state=$(cat /run/passvm/reserved/$BDF 2>/dev/null)
if [[ $rc == 0 && $(bdf_driver $BDF) == vfio-pci && -c /dev/vfio/$group && $state == driver=nvme ]]; then
    result host.reserve pass group=$group
else
    result host.reserve fail detail="rc=$rc driver=$(bdf_driver $BDF) /dev/vfio/$group=$([[ -c /dev/vfio/$group ]] && echo yes || echo no) state='$state': $(tr '\n' ' ' < "$OUT/reserve.out" | head -c 300)"
fi

"$HOST" list --json > "$OUT/list-reserved.json" 2>&1
"$HOST" check --json > "$OUT/check-reserved.json" 2>&1
if [[ $(list_entry "$OUT/list-reserved.json" $BDF driver) == vfio-pci &&
      $(list_entry "$OUT/list-reserved.json" $BDF reserved) == True &&
      $(list_entry "$OUT/list-reserved.json" $BDF ready) == True &&
      $(check_verdict "$OUT/check-reserved.json" "device $BDF") == pass ]]; then
    result host.reserve_list pass
else
    result host.reserve_list fail detail="list/check disagree with sysfs after reserve (see list-reserved.json, check-reserved.json)"
fi

# --- release: back to nvme, override cleared, memory dropped
"$HOST" release $BDF > "$OUT/release.out" 2>&1
rc=$?
for _ in $(seq 30); do [[ -n $(ls /sys/bus/pci/devices/$BDF/nvme 2>/dev/null) ]] && break; sleep 0.2; done
"$HOST" list --json > "$OUT/list-released.json" 2>&1
override=$(cat /sys/bus/pci/devices/$BDF/driver_override)
if [[ $rc == 0 && $(bdf_driver $BDF) == nvme && $override == "(null)" && ! -e /run/passvm/reserved/$BDF &&
      $(list_entry "$OUT/list-released.json" $BDF reserved) == False && -n $(ls /sys/bus/pci/devices/$BDF/nvme 2>/dev/null) ]]; then
    result host.release pass controller=$(ls /sys/bus/pci/devices/$BDF/nvme)
else
    result host.release fail detail="rc=$rc driver=$(bdf_driver $BDF) override=$override: $(tr '\n' ' ' < "$OUT/release.out" | head -c 300)"
fi

# --- a disk the host uses is refused (swap on the nvme namespace), and --dry-run shows the writes
disk=$(ls /sys/bus/pci/devices/$BDF/nvme/*/ 2>/dev/null | grep -m1 '^nvme[0-9]*n1$')
refused=""
if [[ -n $disk ]] && mkswap -q /dev/$disk >/dev/null 2>&1 && swapon /dev/$disk; then
    "$HOST" reserve $BDF > "$OUT/refuse.out" 2>&1
    rc=$?
    swapoff /dev/$disk
    if [[ $rc == 1 && $(bdf_driver $BDF) == nvme ]] && grep -q "used as swap" "$OUT/refuse.out" && grep -q -- "--force" "$OUT/refuse.out"; then
        refused=yes
    fi
    detail="rc=$rc driver=$(bdf_driver $BDF): $(tr '\n' ' ' < "$OUT/refuse.out" | head -c 300)"
else
    detail="could not put swap on /dev/$disk"
fi
"$HOST" reserve --dry-run $BDF > "$OUT/dry-run.out" 2>&1
if [[ -n $refused && $(bdf_driver $BDF) == nvme ]] && grep -q "would: echo '$BDF' > /sys/bus/pci/drivers_probe" "$OUT/dry-run.out"; then
    result host.refuse pass
else
    result host.refuse fail detail="$detail"
fi

# --- parked on pci-stub (override and bind, as a user would): reserve, release, back on pci-stub
stub_detail=""
if modprobe pci-stub 2>"$OUT/stub.err" && [[ -d /sys/bus/pci/drivers/pci-stub ]]; then
    echo pci-stub > /sys/bus/pci/devices/$BDF/driver_override
    echo $BDF > /sys/bus/pci/devices/$BDF/driver/unbind
    echo $BDF > /sys/bus/pci/drivers/pci-stub/bind
    if [[ $(bdf_driver $BDF) == pci-stub ]]; then
        "$HOST" reserve $BDF > "$OUT/stub-reserve.out" 2>&1; rrc=$?
        "$HOST" release $BDF > "$OUT/stub-release.out" 2>&1; lrc=$?
        stub_driver=$(bdf_driver $BDF)
        stub_override=$(cat /sys/bus/pci/devices/$BDF/driver_override)
        [[ $rrc == 0 && $lrc == 0 && $stub_driver == pci-stub && $stub_override == pci-stub ]] ||
            stub_detail="reserve rc=$rrc release rc=$lrc driver=$stub_driver override=$stub_override: $(tr '\n' ' ' < "$OUT/stub-release.out" | head -c 300)"
    else
        stub_detail="could not park $BDF on pci-stub (driver $(bdf_driver $BDF))"
    fi
    # Back to nvme for what follows.
    echo > /sys/bus/pci/devices/$BDF/driver_override
    [[ -e /sys/bus/pci/devices/$BDF/driver ]] && echo $BDF > /sys/bus/pci/devices/$BDF/driver/unbind
    echo $BDF > /sys/bus/pci/drivers/nvme/bind
    for _ in $(seq 30); do [[ $(bdf_driver $BDF) == nvme ]] && break; sleep 0.2; done
else
    stub_detail="modprobe pci-stub failed: $(head -c 200 "$OUT/stub.err")"
fi
if [[ -z $stub_detail ]]; then result host.stub pass; else result host.stub fail detail="$stub_detail"; fi

# --- bad input: one line naming the problem and the fix, exit 1
errs=""
out=$("$HOST" reserve 0/99/0 2>&1); rc=$?
[[ $rc == 1 && $out == "error: malformed PCI address '0/99/0'"* && $(wc -l <<<"$out") == 1 ]] || errs+="malformed($rc: $out) "
out=$("$HOST" reserve 0000:00:1e.7 2>&1); rc=$?
[[ $rc == 1 && $out == *"unknown device 0000:00:1e.7"* ]] || errs+="unknown($rc: $out) "
if command -v setpriv >/dev/null; then
    out=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$HOST" reserve $BDF 2>&1); rc=$?
    [[ $rc == 1 && $out == *"must run as root"* ]] || errs+="nonroot($rc: $out) "
fi
if [[ -z $errs ]]; then result host.errors pass; else result host.errors fail detail="$errs"; fi
