# Boot-time claim, second half (see host-bootclaim.early.sh): 00:03.0, listed in
# /etc/passvm/pptdevs.conf, was claimed by the udev rule at its "add" event and never
# bound to nvme, although nvme was loaded by udev for that very event and again by L1.
# Then: release hands it to nvme (which never had it: found by modalias), and the
# systemd fallback `reserve --apply-config` takes it back from a bound host driver.
# lab-expect: host.bootclaim_udev host.bootclaim host.bootclaim_list host.bootclaim_release host.apply_config
# Run it first among scenarios that use 00:03.0: they give the device back to nvme.
# lab-timeout: 180

source "$LAB_DIR/scenarios/host-lib.sh"
BDF=0000:00:03.0
OUT=$LAB_OUT
declare -A early
while read -r line; do early[${line%%=*}]=${line#*=}; done < "$OUT/early.env" 2>/dev/null
HOST=${early[host]:-$(host_binary)}

# The rule ran passvm-host (its state file says the device had no driver), nvme was loaded
# for the same event, and the device still ended on vfio-pci.
if [[ ${early[driver_before]-x} == "" && -n ${early[claim_line]} && ${early[state]} == driver= &&
      ${early[nvme_before]} == 0 && ${early[nvme_after]} == 1 && ${early[driver_after]} == vfio-pci ]]; then
    result host.bootclaim_udev pass udev_log_claim_line=${early[claim_line]} udev_log_nvme_load_line=${early[nvme_load_line]:-0}
else
    result host.bootclaim_udev fail detail="early hook: $(tr '\n' ' ' < "$OUT/early.env" 2>/dev/null)"
fi

group=$(sysfs_group $BDF)
nvme_loaded=$(grep -c '^nvme ' /proc/modules)
if [[ $(bdf_driver $BDF) == vfio-pci && $nvme_loaded == 1 && -c /dev/vfio/$group &&
      -z $(ls /sys/bus/pci/devices/$BDF/nvme 2>/dev/null) ]] && ! dmesg | grep -q "nvme nvme[0-9]*: pci function $BDF"; then
    result host.bootclaim pass group=$group
else
    hint=""
    [[ ! -e /run/passvm/reserved/$BDF ]] && hint=" (released since boot: list host-bootclaim before other scenarios that use $BDF)"
    result host.bootclaim fail detail="driver=$(bdf_driver $BDF) nvme_loaded=$nvme_loaded $(dmesg | grep -m1 "pci function $BDF")$hint"
fi

"$HOST" list --json > "$OUT/list-claimed.json" 2>&1
if [[ $(list_entry "$OUT/list-claimed.json" $BDF reserved) == True && $(list_entry "$OUT/list-claimed.json" $BDF ready) == True ]]; then
    result host.bootclaim_list pass
else
    result host.bootclaim_list fail detail="list --json: $(json_get "$OUT/list-claimed.json" "[d for d in j if d['address']=='$BDF']" 2>&1 | head -c 300)"
fi

"$HOST" release $BDF > "$OUT/release.out" 2>&1
rc=$?
for _ in $(seq 30); do [[ -n $(ls /sys/bus/pci/devices/$BDF/nvme 2>/dev/null) ]] && break; sleep 0.2; done
if [[ $rc == 0 && $(bdf_driver $BDF) == nvme ]]; then
    result host.bootclaim_release pass
else
    result host.bootclaim_release fail detail="rc=$rc driver=$(bdf_driver $BDF): $(tr '\n' ' ' < "$OUT/release.out" | head -c 300)"
fi

# Built-in drivers bind before udev: the oneshot service path takes the device back.
"$HOST" reserve --apply-config > "$OUT/apply.out" 2>&1
rc=$?
if [[ $rc == 0 && $(bdf_driver $BDF) == vfio-pci && -c /dev/vfio/$group ]]; then
    result host.apply_config pass
else
    result host.apply_config fail detail="rc=$rc driver=$(bdf_driver $BDF): $(tr '\n' ' ' < "$OUT/apply.out" | head -c 300)"
fi
"$HOST" release $BDF > /dev/null 2>&1
rm -f /etc/passvm/pptdevs.conf
