#!/usr/bin/env bash
# Which instructions each x86 kernel directory's objects may hold (`make check`): the flags in the Makefile decide
# that, and a wrong flag would only show as SIGILL on a CPU CI does not have. Checks, in BUILD (default build):
#   avx2/     no EVEX encoding (first byte 0x62 in 64-bit mode), no vpdpbusd: runs on AVX2-only CPUs;
#   avxvnni/  no EVEX, and its vpdpbusd VEX-encoded (objdump, binutils >= 2.36, prints "{vex}"): runs on AVX-VNNI
#             CPUs without AVX-512, which QEMU cannot emulate, so this is the test that the AVX-VNNI kernel is
#             what those CPUs can run;
#   avx512/   no vpdpbusd (AVX-512 without VNNI: Skylake-X).
# Prints "ddpm_tests[isa-objects]: N passed, M failed" like the test suite.
set -u -o pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
passed=0
failed=0
check() {  # check NAME CONDITION-EXIT-STATUS
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); else echo "isa-objects: FAILED: $1"; failed=$((failed + 1)); fi
}
# Instructions (mnemonic and operands) whose first opcode byte is 0x62: EVEX.
evex() { objdump -d "$@" | awk -F'\t' 'NF >= 3 && $2 ~ /^62 / {print $3}'; }
if [ "$(uname -m)" != x86_64 ]; then
  echo "ddpm_tests[isa-objects]: 0 passed, 0 failed (not x86-64)"
  exit 0
fi
for dir in avx2 avxvnni avx512; do
  if ! ls "$build/src/kernels/$dir/"*.o >/dev/null 2>&1; then
    echo "isa-objects: no objects in $build/src/kernels/$dir (build first)"
    echo "ddpm_tests[isa-objects]: 0 passed, 1 failed"
    exit 1
  fi
done
objs() { ls "$build/src/kernels/$1/"*.o 2>/dev/null; }
# shellcheck disable=SC2046
{
  n=$(evex $(objs avx2) | wc -l);            check "avx2: $n EVEX instructions" "$([ "$n" -eq 0 ]; echo $?)"
  n=$(objdump -d $(objs avx2) | grep -c vpdpbusd); check "avx2: $n vpdpbusd" "$([ "$n" -eq 0 ]; echo $?)"
  n=$(evex $(objs avxvnni) | wc -l);         check "avxvnni: $n EVEX instructions" "$([ "$n" -eq 0 ]; echo $?)"
  n=$(objdump -d $(objs avxvnni) | grep -c '{vex} vpdpbusd')
  check "avxvnni: no VEX vpdpbusd" "$([ "$n" -gt 0 ]; echo $?)"
  n=$(objdump -d $(objs avx512) | grep -c vpdpbusd); check "avx512: $n vpdpbusd" "$([ "$n" -eq 0 ]; echo $?)"
}
echo "ddpm_tests[isa-objects]: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
