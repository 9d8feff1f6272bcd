# Source with a target name (aarch64 | aarch64-fp16 | armv7) to cross-build and run tests under qemu-user with
# Debian's cross gcc. Kept out of .cargo/config.toml on purpose: on a Pi the native build must not
# pick up a cross-linker.
case "${1:-aarch64}" in
  aarch64 | aarch64-fp16)
    # aarch64: a Raspberry Pi 4's core (no FP16: f16 is refused). aarch64-fp16: qemu's `max` core,
    # which has FP16 arithmetic, so the f16 precision is tested too. tract looks for FP16 in
    # /proc/cpuinfo, which qemu-user passes through from the x86 host: name it a core it knows to
    # have FP16 (and SDOT, which `max` has as well).
    cpu=cortex-a72
    if [ "$1" = aarch64-fp16 ]; then
      cpu=max
      export TRACT_CPU_AARCH64_KIND=a75
    fi
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu"
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export EDGE_MNV2_TEST_RUNNER="$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER"
    ;;
  armv7)
    export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
    export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm -cpu cortex-a7 -L /usr/arm-linux-gnueabihf"
    export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
    export EDGE_MNV2_TEST_RUNNER="$CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER"
    # tract only uses NEON on 32-bit ARM when told the CPU has it.
    export TRACT_CPU_ISA=+neon
    ;;
  *) echo "cross-env.sh: unknown target '$1' (aarch64 | aarch64-fp16 | armv7)" >&2; return 1 ;;
esac
