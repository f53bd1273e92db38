# Lab self-test: a deliberately broken scenario. It asks QEMU to pass through a PCI
# address that does not exist in L1 (00:1e.0), so L2 can never boot. The lab must
# report this as a failure with a readable reason, quickly and without hanging;
# ctest runs it with lab/run --expect-fail.
# lab-expect: broken.vmm
# lab-timeout: 120

run_l2 broken --timeout 60 -- \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 256 -smp 1 \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" \
    -append "$(l2_append cpus,nvme)" \
    -device vfio-pci,host=0000:00:1e.0
