# Reset fallback: the two functions at L1 01:00 (edu, below root port 00:0b.0) have no function
# reset, so vfio-pci opens them without resetting them. passvm resets them with a secondary bus reset
# (VFIO_DEVICE_PCI_HOT_RESET) because every device that reset touches is in a group it holds, and
# says so; L2 then uses them (edu DMA round trip).
# lab-expect: hr.nofunctionreset pvhr.vmm pvhr.lspci pvhr.edu pvhr.reset
# lab-timeout: 600

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary pvhr.vmm
F0=0000:01:00.0 F1=0000:01:00.1
# Neither function has a reset of its own (FLR, PM, AF). sysfs may still list "bus" for function 0: the
# kernel lists methods when a function appears, before its sibling did, and a bus reset cannot be a
# function's own once the bus holds two (vfio-pci does not offer it).
methods="$(cat /sys/bus/pci/devices/$F0/reset_method 2>/dev/null)|$(cat /sys/bus/pci/devices/$F1/reset_method 2>/dev/null)"
if [[ ! $methods =~ flr|pm|af|device_specific ]]; then result hr.nofunctionreset pass reset_methods="$methods"
else result hr.nofunctionreset fail detail="01:00.x have reset methods '$methods': the lab device no longer needs the fallback"; fi
for bdf in $F0 $F1; do
    bind_vfio $bdf || { result pvhr.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done

run_l2 pvhr --timeout 480 -- \
    "$PASSVM" -c 1 -m 256M -s 0,hostbridge -s 11:0,passthru,$F0 -s 11:1,passthru,$F1 \
    -l com1,stdio --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "$(l2_append lspci,edu lab.expect_pci=1234:11e8)" labvm
rc=$?
console=$LAB_OUT/pvhr.console
r0=$(grep -o "passvm: $F0 reset (bus, a hot reset of [0-9a-f:., ]*)" "$console" | head -n 1)
r1=$(grep -o "passvm: $F1 reset (bus[^)]*)" "$console" | head -n 1)
if [[ -n $r0 && $r0 == *"$F1"* && -n $r1 ]]; then result pvhr.reset pass first="$r0" second="$r1"
else result pvhr.reset fail detail="passvm did not report a bus reset of both functions: '$r0' '$r1'"; fi
exit $rc
