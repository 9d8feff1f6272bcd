# Source with a target name (aarch64 | armv7) to cross-build and run tests under qemu-user with
# Debian's cross gcc. Kept out of .cargo/config.toml on purpose: on a Pi the native build must not
# pick up a cross-linker.
case "${1:-aarch64}" in
  aarch64)
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu"
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
  *) echo "cross-env.sh: unknown target '$1' (aarch64 | armv7)" >&2; return 1 ;;
esac
