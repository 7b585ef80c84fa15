#!/usr/bin/env bash
# Everything CI runs (`make check`): installs missing packages, then builds and runs the test suite
#   1. natively, with the best kernel level of this CPU (the suite itself also compares every level it can run);
#   2. natively with DDPM_ISA=scalar (the reference kernels end to end);
#   3. from a build without any SIMD code (NO_SIMD=1);
#   4. for ARM64, cross-compiled and run under qemu-aarch64 as a Cortex-A76 (dotprod) and, kernel and quantisation
#      tests only, as a Cortex-A72 (no dotprod) (NEON kernels proven, not assumed);
#   5. under AddressSanitizer + UndefinedBehaviorSanitizer;
#   and checks the x86 kernel objects for instructions their CPUs lack (tests/check_isa_objects.sh); where the CPU
#   has AVX-512 VNNI, the quantised-GEMM tests also run on the AVX2 level with the AVX-VNNI kernel's arithmetic.
# Ends with one line "check: N passed, M failed" summing the test cases of every run; exit code 0 only if all passed.
set -u -o pipefail
cd "$(dirname "$0")/.."

need=()
have() { dpkg -s "$1" >/dev/null 2>&1; }
for pkg in catch2 g++ make g++-aarch64-linux-gnu qemu-user clang libclang-rt-14-dev; do have "$pkg" || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "check: need root to install ${need[*]}"; exit 1; fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null || {
    echo "check: apt-get install ${need[*]} failed"; exit 1; }
fi

jobs=$(nproc 2>/dev/null || echo 2)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
failures=0

# run NAME COMMAND... : runs one configuration, keeps its closing line.
# Every build below with line tables only (-g1 instead of -g): enough for sanitizer and crash traces, and a third
# less compile time for the Catch2 test files; CI must stay within 30 minutes on 2 cores.
export DEBUG_INFO=-g1

run() {
  local name=$1; shift
  echo "== $name"
  local start=$SECONDS
  local out
  out=$(mktemp)
  if "$@" 2>&1 | tee "$out" | grep -E '^(ddpm_tests|FAILED|.*: FAILED|.*error:)' ; then :; fi
  local status=${PIPESTATUS[0]}
  local line
  line=$(grep -E '^ddpm_tests\[[a-z0-9-]+\]: [0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)
  if [ "$status" -ne 0 ] || [ -z "$line" ]; then
    echo "-- $name FAILED (exit $status); last output:"
    tail -n 40 "$out"
    failures=$((failures + 1))
  fi
  # Seconds per configuration (build included): CI must stay within 30 minutes on 2 cores.
  [ -n "$line" ] && echo "$name ${line#*: } ($((SECONDS - start)) s)" >> "$log"
  rm -f "$out"
}

build_and_test() {  # build_and_test BUILD_DIR [make vars...] [TEST_ARGS=catch2 test spec]
  local dir=$1; shift
  local vars=() spec=()
  for arg in "$@"; do
    case $arg in
      TEST_ARGS=*) spec=("${arg#TEST_ARGS=}") ;;
      *) vars+=("$arg") ;;
    esac
  done
  make -s -j"$jobs" BUILD="$dir" "${vars[@]}" "$dir/ddpm_tests" "$dir/ddpm" &&
    (cd tests && DDPM_BIN="../$dir/ddpm" "../$dir/ddpm_tests" "${spec[@]}")
}

run "native"        build_and_test build
run "isa-objects"   bash tests/check_isa_objects.sh build
# The AVX2 level with the AVX-VNNI kernel's arithmetic (its EVEX build), end to end through convs, linears and the
# U-Net tests, wherever AVX-512 VNNI can run it: most CI machines lack AVX-VNNI itself (where they have it, the
# native run's AVX2 level uses the VEX kernel too).
if grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null; then
  run "avx2-vnni"   env DDPM_QGEMM=avxvnni-evex DDPM_ISA=avx2 DDPM_BIN=../build/ddpm \
                      bash -c "cd tests && ../build/ddpm_tests '[qgemm],[unet],[conv]'"
fi
# The scalar kernels twice: forced at run time, and in a build without SIMD code. Both leave out the quantiser's
# calibration test: it checks what ddpm quantize decides, whatever kernels it runs on, and in scalar it takes two
# minutes per run (of CI's 30); the native and sanitizer runs keep it.
run "native-scalar" env DDPM_ISA=scalar DDPM_BIN=../build/ddpm bash -c "cd tests && ../build/ddpm_tests '~[calibrate]'"
run "no-simd"       build_and_test build-nosimd NO_SIMD=1 TEST_ARGS='~[calibrate]'
# ARM64 twice (the trainer's and the quantiser's calibration tests, ISA-independent end-to-end runs that take
# minutes under qemu, are left to the native runs, to keep CI within its time budget): the suite on a Cortex-A76 (Raspberry Pi 5: dotprod, so the sdot kernel is selected and the
# one without is tested too), then on a Cortex-A72 (Raspberry Pi 4: no dotprod) only the kernel and quantisation
# tests, where the selection must avoid sdot (a SIGILL fails the run); nothing else differs between the two CPUs.
# DDPM_EXPECT_QGEMM makes the suite check which quantised-GEMM kernel the NEON level picked. (make again: a failed
# build must not leave the A72 run testing an old binary.)
run "arm64-qemu"    bash -c "make -s -j$jobs BUILD=build-arm64 CXX=aarch64-linux-gnu-g++ LDFLAGS=-static build-arm64/ddpm_tests \
                      && cd tests && DDPM_EXPECT_QGEMM=neon-dotprod qemu-aarch64 -cpu cortex-a76 ../build-arm64/ddpm_tests '~[train]~[calibrate]'"
run "arm64-a72"     bash -c "make -s -j$jobs BUILD=build-arm64 CXX=aarch64-linux-gnu-g++ LDFLAGS=-static build-arm64/ddpm_tests \
                      && cd tests && DDPM_EXPECT_QGEMM=neon qemu-aarch64 -cpu cortex-a72 ../build-arm64/ddpm_tests \
                      '[qgemm],[kernels],[quant]~[calibrate]'"
run "asan-ubsan"    build_and_test build-asan SANITIZE=1 OPT=-O1
run "fuzz"          bash tests/fuzz/run.sh 10

passed=$(awk '{p += $2} END {print p + 0}' "$log")
failed=$(awk '{f += $4} END {print f + 0}' "$log")
echo "== summary"
cat "$log"
[ "$failures" -gt 0 ] && failed=$((failed + failures))
echo "check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
