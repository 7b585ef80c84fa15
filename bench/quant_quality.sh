#!/usr/bin/env bash
# Quality of every weight type against f32, as one table (the figures of docs/QUANT.md):
#
#   bench/quant_quality.sh [TRAINED.ddpm]
#
# Models: the reference U-Nets of tests/data/unet (micro, tiny; their safetensors converted), the cifar10-size U-Net
# with random weights (bench/make_checkpoint.py, needs Debian's python3-torch) and, when given, a trained
# class-conditional model (Fashion-MNIST). Each is written as f32 and re-typed with `ddpm quantize --type T` for
# T in f16 q8_0 q5_0 q4_1 q4_0 (the default policy; extra `ddpm quantize` options in QUANTIZE_ARGS). Columns:
#   size, % of f32   the .ddpm file
#   t=50/500/950     relative L2 of the U-Net output against the f32 file's, on the same inputs: two batch items per
#                    timestep (one for cifar10), Gaussian noise for the random-weight models, test images noised to x_t for the
#                    trained one; "mean" averages the three
#   sample           trained model only: relative L2 of DDIM-50 samples (`ddpm generate --save-raw`, fixed seed)
#                    against the f32 file's samples from the same seed
#   eval loss        trained model only: `ddpm eval` held-out denoising loss on the first EVAL_N test images
#
# Environment: DDPM (binary, default build/ddpm), THREADS (default 1), WORK (scratch dir, default a fresh temp dir;
# the cifar10 checkpoint is cached there), SAMPLES (images per DDIM run, default 4), EVAL_N (default 500),
# FASHION (directory of the Fashion-MNIST IDX files, default /usr/share/datasets/fashion-mnist),
# MODELS (subset of "micro tiny cifar10 trained"), INT8_WINOGRAD (auto, on or off: `--int8-winograd` for every
# forward, generate and eval; default auto, each type as its users get it). Bench-only: the python3 here prepares
# inputs and compares floats; nothing in the runtime needs it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
DDPM=${DDPM:-$repo/build/ddpm}
THREADS=${THREADS:-1}
INT8_WINOGRAD=${INT8_WINOGRAD:-auto}
SAMPLES=${SAMPLES:-4}
EVAL_N=${EVAL_N:-500}
FASHION=${FASHION:-/usr/share/datasets/fashion-mnist}
MODELS=${MODELS:-micro tiny cifar10 trained}
TYPES=${TYPES:-f16 q8_0 q5_0 q4_1 q4_0}
PY=/usr/bin/python3
trained=${1:-}

[ -x "$DDPM" ] || { echo "quant_quality.sh: no ddpm binary at $DDPM (build it, or set DDPM)" >&2; exit 1; }
if [ -n "$trained" ] && [ ! -f "$trained" ]; then echo "quant_quality.sh: $trained: no such file" >&2; exit 1; fi
if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
start=$(date +%s)

# make_inputs OUT.f32 B C H W [IDX_IMAGES IDX_LABELS LABELS_OUT]: B/3 items at each of t = 50, 500, 950. Without
# images, x ~ N(0, 1); with images, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for the first B test images
# (linear betas 1e-4..0.02 over 1000 steps, the trainer's schedule), their labels written to LABELS_OUT.
make_inputs() {
  "$PY" - "$@" <<'EOF'
import array, gzip, math, random, sys
out, b, c, h, w = sys.argv[1], *map(int, sys.argv[2:6])
rng = random.Random(1234)
ts = [(50, 500, 950)[i * 3 // b] for i in range(b)]
n = c * h * w
x = array.array("f")
if len(sys.argv) > 6:
    images = gzip.open(sys.argv[6]).read()[16:]
    labels = gzip.open(sys.argv[7]).read()[8:8 + b]
    open(sys.argv[8], "w").write(",".join(str(v) for v in labels))
    abar, ab = [], 1.0
    for i in range(1000):
        ab *= 1.0 - (1e-4 + (0.02 - 1e-4) * i / 999)
        abar.append(ab)
    for i in range(b):
        a = abar[ts[i]]
        for j in range(n):
            x0 = images[i * n + j] / 127.5 - 1.0
            x.append(math.sqrt(a) * x0 + math.sqrt(1 - a) * rng.gauss(0, 1))
else:
    x.extend(rng.gauss(0, 1) for _ in range(b * n))
x.tofile(open(out, "wb"))
print(",".join(map(str, ts)))
EOF
}

# rel_l2 REF.f32 OUT.f32 GROUPS: relative L2 of OUT against REF in percent, for GROUPS equal consecutive slices
# (one per timestep) and their mean.
rel_l2() {
  "$PY" - "$@" <<'EOF'
import array, math, sys
ref, out = array.array("f"), array.array("f")
ref.frombytes(open(sys.argv[1], "rb").read())
out.frombytes(open(sys.argv[2], "rb").read())
g = int(sys.argv[3])
assert len(ref) == len(out) and len(ref) % g == 0
k = len(ref) // g
errs = []
for s in range(g):
    d = sum((out[i] - ref[i]) ** 2 for i in range(s * k, (s + 1) * k))
    r = sum(ref[i] ** 2 for i in range(s * k, (s + 1) * k))
    errs.append(100 * math.sqrt(d / r))
print(" ".join(f"{e:.3f}" for e in errs + [sum(errs) / g]))
EOF
}

# quiet CMD...: runs CMD, showing its output only when it fails.
quiet() {
  local log
  if ! log=$("$@" 2>&1); then
    printf '%s\n' "$log" >&2
    echo "quant_quality.sh: failed: $*" >&2
    exit 1
  fi
}

config_value() { "$PY" -c "import json,sys; c=json.load(open(sys.argv[1])); print(c[sys.argv[2]])" "$1" "$2"; }

printf "%-8s %-5s %9s %7s %8s %8s %8s %8s %8s %10s\n" model type "size MB" "% f32" "t=50" "t=500" "t=950" mean \
  sample "eval loss"

# measure NAME F32.ddpm B C H W [trained]
measure() {
  local name=$1 f32=$2 b=$3 c=$4 h=$5 w=$6 kind=${7:-} dir=$WORK/$1
  local labels_args=() ts
  if [ "$kind" = trained ]; then
    ts=$(make_inputs "$dir/x.f32" "$b" "$c" "$h" "$w" "$FASHION/t10k-images-idx3-ubyte.gz" \
           "$FASHION/t10k-labels-idx1-ubyte.gz" "$dir/labels.txt")
    labels_args=(--class-labels "$(cat "$dir/labels.txt")")
  else
    ts=$(make_inputs "$dir/x.f32" "$b" "$c" "$h" "$w")
  fi
  local f32_bytes
  f32_bytes=$(stat -c %s "$f32")
  for type in f32 $TYPES; do
    local m=$dir/$type.ddpm
    if [ "$type" = f32 ]; then
      m=$f32
    else
      # shellcheck disable=SC2086
      quiet "$DDPM" quantize "$f32" "$m" --type "$type" -q ${QUANTIZE_ARGS:-}
    fi
    quiet "$DDPM" forward -t "$THREADS" --int8-winograd "$INT8_WINOGRAD" -m "$m" --input "$dir/x.f32" \
      --shape "$b,$c,$h,$w" --timesteps "$ts" "${labels_args[@]}" -o "$dir/y_$type.f32"
    local bytes errs sample="-" loss="-"
    bytes=$(stat -c %s "$m")
    errs=$(rel_l2 "$dir/y_f32.f32" "$dir/y_$type.f32" 3)
    if [ "$kind" = trained ]; then
      quiet "$DDPM" generate -t "$THREADS" --int8-winograd "$INT8_WINOGRAD" -m "$m" -n "$SAMPLES" --seed 7 \
        --sampler ddim --steps 50 --save-raw "$dir/s_$type.f32" -o "$dir/s_$type.png"
      sample=$(rel_l2 "$dir/s_f32.f32" "$dir/s_$type.f32" 1 | cut -d' ' -f1)
      loss=$("$DDPM" eval -t "$THREADS" --int8-winograd "$INT8_WINOGRAD" -m "$m" \
               --data "$FASHION/t10k-images-idx3-ubyte.gz" --labels "$FASHION/t10k-labels-idx1-ubyte.gz" -n "$EVAL_N" | sed -n 's/.*: loss \([0-9.]*\).*/\1/p')
    fi
    # shellcheck disable=SC2086
    printf "%-8s %-5s %9.2f %6.1f%% %7s%% %7s%% %7s%% %7s%% %8s %10s\n" "$name" "$type" \
      "$(echo "$bytes" | awk '{print $1 / 1e6}')" "$(awk -v a="$bytes" -v b="$f32_bytes" 'BEGIN{print 100 * a / b}')" \
      $errs "$( [ "$sample" = - ] && echo - || echo "$sample%")" "$loss"
  done
}

for name in $MODELS; do
  dir=$WORK/$name
  mkdir -p "$dir"
  case $name in
    micro | tiny)
      src=$repo/tests/data/unet/$name
      st=$src/diffusion_pytorch_model.safetensors
      [ -f "$st" ] || st=$src/diffusion_pytorch_model.fp16.safetensors  # tiny ships f16 weights only
      quiet "$DDPM" convert "$st" --config "$src/config.json" -o "$dir/f32.ddpm"
      size=$(config_value "$src/config.json" sample_size)
      measure "$name" "$dir/f32.ddpm" 6 "$(config_value "$src/config.json" in_channels)" "$size" "$size"
      ;;
    cifar10)
      if [ ! -f "$dir/ckpt/diffusion_pytorch_model.safetensors" ]; then
        quiet "$PY" "$here/make_checkpoint.py" "$dir/ckpt"
      fi
      [ -f "$dir/f32.ddpm" ] || quiet "$DDPM" convert "$dir/ckpt" -o "$dir/f32.ddpm"
      measure cifar10 "$dir/f32.ddpm" 3 3 32 32
      ;;
    trained)
      [ -n "$trained" ] || continue
      # The f32 reference: the file as trained (quantize --type f32 also turns an f16 file back into f32 values).
      quiet "$DDPM" quantize "$trained" "$dir/f32.ddpm" --type f32 -q
      shape=$("$DDPM" info "$dir/f32.ddpm" | sed -n 's/^image: \([0-9]*\)x\([0-9]*\), \([0-9]*\) channels.*/\3 \1 \2/p')
      read -r c h w <<<"$shape"
      measure trained "$dir/f32.ddpm" 6 "$c" "$h" "$w" trained
      ;;
    *) echo "quant_quality.sh: unknown model '$name'" >&2; exit 2 ;;
  esac
done
echo "($(($(date +%s) - start)) s; $("$DDPM" --version | head -1); threads $THREADS)"
