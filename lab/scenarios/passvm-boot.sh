# passvm boots the L2 guest with no device passed through: 2 vCPUs and 512 MiB reach
# init, the PCI bus lists the host bridge, a line typed on passvm's stdin runs in L2's
# shell, and the guest's poweroff makes passvm exit 0.
# lab-expect: pv.vmm pv.boot pv.cpus pv.mem pv.lspci pv.console
# lab-timeout: 400

if [[ -z $PASSVM || ! -x $PASSVM ]]; then
    result pv.vmm fail detail="no passvm binary: run lab/run --passvm BUILD/src/cli/passvm"
    exit 1
fi
run_l2 pv --timeout 360 --type 'echo L2CON$((40+2))' -- \
    "$PASSVM" -c 2 -m 512M -s 0,hostbridge -l com1,stdio --stats \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "$(l2_append cpus,mem,lspci,console lab.cpus=2 lab.mem_mb=512 lab.expect_pci=1b36:0008)" labvm
