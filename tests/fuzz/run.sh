#!/usr/bin/env bash
# Builds the libFuzzer targets of this directory and runs each for a while.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]     SECONDS per target (default 20); all targets unless named
#
# Each target starts from its kept seed corpus (corpus/<target>/, small real files) and writes what it discovers to a
# temporary directory, so the kept corpus only grows by hand (add crashing inputs there once the bug is fixed). Crash
# inputs are saved under build-fuzz/artifacts/. Per target it prints the executions and coverage (cov: edges, ft:
# features); it exits non-zero on any crash, leak, timeout or sanitizer report, and ends with the line
# "ddpm_tests[fuzz]: N passed, M failed" (N = targets that ran clean), which tests/check.sh collects.
#
# Needs clang++ with libFuzzer (Debian: clang, libclang-rt-14-dev). The library objects the targets link are built by
# the Makefile with clang and -fsanitize=fuzzer-no-link,address,undefined in build-fuzz/lib.
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
seconds=${1:-20}
shift $(( $# > 0 ? 1 : 0 ))
all_targets=(pickle zip safetensors ddpm image)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")

# Longest input per target: a bit above the largest seed, so mutations can grow it without making runs slow.
declare -A max_len=([pickle]=16384 [zip]=8192 [safetensors]=8192 [ddpm]=131072 [image]=16384)

cxx=${FUZZ_CXX:-clang++}
jobs=$(nproc 2>/dev/null || echo 2)
out=build-fuzz
sanitize="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
mkdir -p "$out/artifacts"
if ! command -v "$cxx" >/dev/null; then
  echo "fuzz: $cxx not found (install clang and libclang-rt-14-dev)"
  echo "ddpm_tests[fuzz]: 0 passed, ${#targets[@]} failed"
  exit 1
fi

# Only what the targets need: I/O, the .ddpm reader, key layouts and U-Net config, core (status, dtype) and the
# kernel registry dtype.cpp uses.
case "$(uname -m)" in
  x86_64) isa_dirs="src/kernels/avx2 src/kernels/avxvnni src/kernels/avx512 src/kernels/avx512vnni" ;;
  aarch64) isa_dirs="src/kernels/neon src/kernels/neon_dotprod" ;;
  *) isa_dirs="" ;;
esac
srcs=$(ls src/io/*.cpp src/core/*.cpp src/quant/*.cpp src/kernels/*.cpp src/kernels/ref/*.cpp src/model/ddpm_file.cpp \
          src/model/layouts.cpp src/model/unet_config.cpp \
          $(for d in $isa_dirs; do ls "$d"/*.cpp; done))
objs=$(for s in $srcs; do echo "$out/lib/${s%.cpp}.o"; done)
echo "== fuzz: building library objects with $cxx"
log=$(mktemp)
tmp=$(mktemp -d)
trap 'rm -rf "$log" "$tmp"' EXIT
if ! make -s -j"$jobs" BUILD="$out/lib" CXX="$cxx" OPT=-O1 CXXFLAGS="$sanitize" $objs >"$log" 2>&1; then
  tail -n 40 "$log"
  echo "ddpm_tests[fuzz]: 0 passed, ${#targets[@]} failed"
  exit 1
fi

passed=0
failed=0
for t in "${targets[@]}"; do
  bin="$out/fuzz_$t"
  if ! "$cxx" -std=c++17 -O1 -g -Wall -Wextra -Iinclude -Isrc -I. -pthread \
         -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
         "tests/fuzz/fuzz_$t.cpp" $objs -o "$bin" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz_$t: BUILD FAILED"
    failed=$((failed + 1))
    continue
  fi
  mkdir -p "$tmp/$t"
  # -timeout: a single input running 10 s is a hang worth reporting; -rss_limit_mb bounds any allocation bomb.
  "$bin" "$tmp/$t" "tests/fuzz/corpus/$t" -max_total_time="$seconds" -max_len="${max_len[$t]:-8192}" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" >"$log" 2>&1
  status=$?
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
  execs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{print $2}')
  cov=$(echo "$done_line" | grep -oE 'cov: [0-9]+' | awk '{print $2}')
  ft=$(echo "$done_line" | grep -oE 'ft: [0-9]+' | awk '{print $2}')
  corp=$(echo "$done_line" | grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' | awk '{print $2}')
  if [ "$status" -eq 0 ] && [ -n "$done_line" ] && ! grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "$log"; then
    printf 'fuzz_%-12s ok      %10s execs  cov: %-6s ft: %-6s corpus %s  (%ss)\n' "$t" "${execs:-?}" "${cov:-?}" \
      "${ft:-?}" "${corp:-?}" "$seconds"
    passed=$((passed + 1))
  else
    echo "fuzz_$t FAILED (exit $status) after ${execs:-?} execs; report:"
    grep -E -A 30 'ERROR: |runtime error:|fuzz invariant violated|==ERROR|SUMMARY' "$log" | head -n 60
    ls -t "$out/artifacts/$t-"* 2>/dev/null | head -n 3 | sed 's/^/  input: /'
    failed=$((failed + 1))
  fi
done
echo "ddpm_tests[fuzz]: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
