# passvm boots the L2 guest with no device passed through: 2 vCPUs and 512 MiB reach
# init, the PCI bus lists the host bridge, a line typed on passvm's stdin runs in L2's
# shell, and the guest's poweroff makes passvm exit 0. L2 names its CPU as L1 does (pv.cpumodel):
# KVM leaves the processor's name out of the CPUID it offers, and passvm fills it in. The RTC is
# the DSDT's PNP0B00 device, as on a PC, and Linux binds rtc_cmos to it (pv.rtc); its interrupt
# reaches the guest, for the update interrupt hwclock waits for and for an alarm (pv.rtcirq).
# lab-expect: pv.vmm pv.boot pv.cpus pv.mem pv.lspci pv.console pv.cpumodel pv.rtc pv.rtcirq
# lab-timeout: 400

if [[ -z $PASSVM || ! -x $PASSVM ]]; then
    result pv.vmm fail detail="no passvm binary: run lab/run --passvm BUILD/src/cli/passvm"
    exit 1
fi
run_l2 pv --timeout 360 --type 'echo L2CON$((40+2))' -- \
    "$PASSVM" -c 2 -m 512M -s 0,hostbridge -l com1,stdio --stats \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "$(l2_append cpus,mem,lspci,rtcirq,console lab.cpus=2 lab.mem_mb=512 lab.expect_pci=1b36:0008)" labvm
host=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1 | tr -d '"\\')
guest=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["checks"]["cpus"]["model"])' \
        "$LAB_OUT/pv.summary.json" 2>/dev/null)
if [[ -n $host && $guest == "$host" ]]; then
    result pv.cpumodel pass model="$guest"
else
    result pv.cpumodel fail l1="$host" l2="$guest" detail="L2 names its CPU '$guest', L1 '$host'"
fi
console="$LAB_OUT/pv.console"
if grep -Eq 'rtc_cmos 00:[0-9a-f]+: registered as rtc0' "$console" && ! grep -q 'no PNP device found' "$console"; then
    result pv.rtc pass
else
    result pv.rtc fail detail="rtc_cmos did not bind to the DSDT's RTC: $(grep -m 3 -e rtc_cmos -e 'PNP device' "$console" | tr -s ' \n' ' ')"
fi
