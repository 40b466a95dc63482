#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine, in one go:
#
#   bench/gpu-check.sh OUTDIR            build, then run every check; logs into OUTDIR
#   bench/gpu-check.sh --pack-deps [DIR] (on a dev machine) pack this machine's oneDNN into
#                                        DIR/dnnl.tar.xz (default .gpu-deps), for a GPU machine
#                                        without it: carry DIR along, the check unpacks it
#
# For an H100/H200 machine with the CUDA toolkit (nvcc, cuBLAS, compute-sanitizer), CMake and a
# C++ compiler, but no Node.js and no network: it builds with plain cmake (the core, the CUDA
# library, the check programs; no addon), then runs
#   1. backend_registry_check --expect available     the library loads and finds the GPU
#   2. cuda_ops_check                                 every op vs the CPU, small + ViT-B shapes
#   3. cuda_model_check --config small --batch 4      training steps, AdamW, whole steps eager
#                                                     and as CUDA graphs, fold vs the CPU
#   4. cuda_model_check --config vit_b16 --batch 8    the same at ViT-B/16, batch 8
#      ... and again with --dtype bf16                 bf16 Linears, CUDA's bf16 GEMM vs the CPU's
#   5. compute-sanitizer memcheck on 3 (small config) and on cuda_ops_check --small
#   6. the benchmark beside PyTorch (timm + the official RepAdapter modules, the same GPU, the
#      same run): cuda_bench (ViT-B/16, training at batch 64, inference at batch 256, float32
#      and bf16), bench/pytorch_bench.py eager, then torch.compile, then bench/gpu_compare.py
#      (ratios per row, the targets met or missed)
# and writes at most 8 files into OUTDIR (no more than 8 come back from a GPU machine): env.log
# (with 1), build.log, ops.log (with 5's second run), model_small.log (with 5's first run),
# model_vitb16.log (both dtypes), bench.log (6's output, the comparison's table last),
# bench.json (both sides' results and the comparison), summary.txt (with the targets' verdicts).
# Each step has a time limit and the whole run a budget (BUDGET_S, default 540 s): planned for
# about 7 minutes on 16 cores (checks ~4.5, benchmark ~2.5), it ends within 9 whatever hangs;
# the sanitizer's second run is only started before BUDGET_S − 240 s (+300 s), which leaves the
# benchmark its time, and torch.compile gets what is left but 25 s (skipped under 60 s).
#
# Environment: REPADAPTER_CUDA_ARCHS (default 90: only the GPU at hand, the fastest build),
# BUDGET_S (540), PYTHON (the one with torch and timm, default python3), REPADAPTER_DEPS (a
# dnnl.tar.xz made by --pack-deps, default .gpu-deps/), BUILD_DIR (default
# /tmp/repadapter-gpu-build), SKIP_BUILD=1 (reuse BUILD_DIR), JOBS.
# Exit status: 0 when every check passed, 1 otherwise (summary.txt says which).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${1:-}" == "--pack-deps" ]]; then
  DIR="${2:-$ROOT/.gpu-deps}"
  mkdir -p "$DIR"
  TMP="$(mktemp -d)"
  mkdir -p "$TMP/dnnl/lib" "$TMP/dnnl/include"
  lib="$(ldconfig -p | awk '/libdnnl\.so\.[0-9]+ /{print $NF; exit}')"
  [[ -n "$lib" ]] || { echo "no libdnnl here to pack" >&2; exit 1; }
  libdir="$(dirname "$lib")"
  cp -a "$libdir"/libdnnl.so* "$TMP/dnnl/lib/"
  # Debian's oneDNN links libOpenCL.so.1, which a CUDA image may lack.
  cp -a "$libdir"/libOpenCL.so* "$TMP/dnnl/lib/" 2>/dev/null || true
  cp -a /usr/include/oneapi "$TMP/dnnl/include/"
  cp -a /usr/include/dnnl*.h "$TMP/dnnl/include/" 2>/dev/null || true
  tar -C "$TMP" -cJf "$DIR/dnnl.tar.xz" dnnl
  rm -rf "$TMP"
  echo "packed $(du -h "$DIR/dnnl.tar.xz" | cut -f1) into $DIR/dnnl.tar.xz; carry $DIR (and list it in .git/info/exclude)"
  exit 0
fi

OUT="${1:?usage: bench/gpu-check.sh OUTDIR | --pack-deps [DIR]}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
BUILD="${BUILD_DIR:-/tmp/repadapter-gpu-build}"
JOBS="${JOBS:-$(nproc)}"
START=$SECONDS
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY"; }
elapsed() { echo $((SECONDS - START)); }
# step NAME LOG LIMIT_S CMD...: runs CMD with a time limit, appending to LOG; records the result.
# The limit is cut to what is left of BUDGET_S (whole run), and a step with under 20 s left is
# skipped, so the script ends within BUDGET_S whatever hangs.
BUDGET_S="${BUDGET_S:-540}"
step() {
  local name="$1" log="$2" limit="$3"
  shift 3
  local left=$((BUDGET_S - $(elapsed)))
  if ((left < 20)); then
    note "$(printf '%-34s %-28s skipped: the %ss budget is spent' "$name" "$(basename "$log")" "$BUDGET_S")"
    FAILED=1
    return 1
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS
  {
    echo "=== $name: $*"
    echo "=== started at +$(elapsed)s, limit ${limit}s"
  } >>"$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "=== exit $rc after $((SECONDS - t0))s" >>"$log"
  local verdict=PASS
  if [[ $rc -ne 0 ]]; then
    verdict=FAIL
    FAILED=1
    [[ $rc -eq 124 || $rc -eq 137 ]] && verdict="FAIL (time limit ${limit}s)"
    [[ $rc -eq 2 ]] && verdict="FAIL (CUDA backend unavailable)"
  fi
  note "$(printf '%-34s %-28s %4ss  rc=%-3s %s' "$name" "$(basename "$log")" "$((SECONDS - t0))" "$rc" "$verdict")"
  return $rc
}

# ---- environment -------------------------------------------------------------------------------
ENVLOG="$OUT/env.log"
{
  echo "date: $(date -u +%FT%TZ)   host: $(hostname)   root: $ROOT"
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo; nvcc --version 2>&1 || echo "nvcc: not on PATH"
  echo; cmake --version 2>&1 | head -1
  echo; ${CXX:-g++} --version 2>&1 | head -1
  echo; echo "cores: $(nproc)"; free -g 2>&1 | head -2
} >"$ENVLOG" 2>&1

export PATH="$PATH:/usr/local/cuda/bin"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
unset REPADAPTER_CUDA_TF32  # the checks assume float32 products (no TF32)
export REPADAPTER_CUDA=ON
export REPADAPTER_CUDA_ARCHS="${REPADAPTER_CUDA_ARCHS:-90}"
CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release)
command -v ninja >/dev/null && CMAKE_ARGS+=(-G Ninja)

# oneDNN (the CPU reference's matrix products): the system's, else a carried .gpu-deps pack.
if [[ ! -e /usr/include/oneapi/dnnl/dnnl.hpp && ! -e /usr/local/include/oneapi/dnnl/dnnl.hpp ]]; then
  PACK=""
  for p in "${REPADAPTER_DEPS:-}" "$ROOT/.gpu-deps/dnnl.tar.xz"; do
    [[ -n "$p" && -f "$p" ]] && PACK="$p" && break
  done
  if [[ -n "$PACK" ]]; then
    mkdir -p /tmp/repadapter-deps && tar -C /tmp/repadapter-deps -xJf "$PACK"
    CMAKE_ARGS+=(-DCMAKE_PREFIX_PATH=/tmp/repadapter-deps/dnnl)
    export LD_LIBRARY_PATH="/tmp/repadapter-deps/dnnl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "oneDNN: from $PACK" >>"$ENVLOG"
  else
    echo "oneDNN: no system copy and no .gpu-deps/dnnl.tar.xz (make one with --pack-deps)" >>"$ENVLOG"
  fi
fi
# cuBLAS: the toolkit's, else the nvidia-cublas wheel of the machine's Python.
HAVE_CUBLAS=0
for f in /usr/local/cuda/include/cublasLt.h /usr/local/cuda/targets/*/include/cublasLt.h; do
  [[ -e "$f" ]] && HAVE_CUBLAS=1
done
if [[ $HAVE_CUBLAS == 0 && -z "${REPADAPTER_CUBLAS_DIR:-}" ]]; then
  WHEEL="$(python3 - <<'EOF' 2>/dev/null
import site, os
for d in site.getsitepackages() + [site.getusersitepackages()]:
    for sub in ("nvidia/cu13", "nvidia/cublas"):
        if os.path.exists(os.path.join(d, sub, "include", "cublasLt.h")):
            print(d); raise SystemExit
EOF
)"
  if [[ -n "$WHEEL" ]]; then
    export REPADAPTER_CUBLAS_DIR="$WHEEL"
    echo "cuBLAS: from the Python wheel under $WHEEL" >>"$ENVLOG"
  fi
fi
echo "cmake args: ${CMAKE_ARGS[*]}; archs $REPADAPTER_CUDA_ARCHS; OMP_NUM_THREADS=$OMP_NUM_THREADS" >>"$ENVLOG"

# ---- build -------------------------------------------------------------------------------------
BUILDLOG="$OUT/build.log"
: >"$BUILDLOG"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  step "configure" "$BUILDLOG" 120 cmake -S "$ROOT" -B "$BUILD" "${CMAKE_ARGS[@]}" || {
    note "configure failed: see build.log"; exit 1; }
  step "build" "$BUILDLOG" 300 cmake --build "$BUILD" -j "$JOBS" --target \
    repadapter_cuda cuda_ops_check cuda_model_check cuda_bench backend_registry_check || {
    note "build failed: see build.log"; exit 1; }
fi
find "$BUILD" -maxdepth 2 -name repadapter_cuda.so -exec ls -la {} \; >>"$BUILDLOG" 2>&1

# ---- checks ------------------------------------------------------------------------------------
step "registry: CUDA available" "$ENVLOG" 60 "$BUILD/backend_registry_check" --expect available
step "ops: small + ViT-B shapes" "$OUT/ops.log" 150 "$BUILD/cuda_ops_check"
step "model: small, batch 4" "$OUT/model_small.log" 90 "$BUILD/cuda_model_check" --config small --batch 4
# ViT-B/16 runs 3 whole steps per model (eager, recorded, replayed): enough for graph ≡ eager.
step "model: vit_b16, batch 8" "$OUT/model_vitb16.log" 240 "$BUILD/cuda_model_check" --config vit_b16 --batch 8 \
  --fused-steps 3
# Appended to the same log: a file of its own would be a ninth, beyond what comes back.
step "model: vit_b16, batch 8, bf16" "$OUT/model_vitb16.log" 180 \
  "$BUILD/cuda_model_check" --config vit_b16 --batch 8 --dtype bf16 --fused-steps 3

SAN="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
if [[ -x "$SAN" ]]; then
  SANFLAGS=(--tool memcheck --error-exitcode 10 --report-api-errors no --print-limit 50)
  step "memcheck: model small" "$OUT/model_small.log" 150 \
    "$SAN" "${SANFLAGS[@]}" "$BUILD/cuda_model_check" --config small --batch 2 --trainable adapters --fused-steps 2
  if (($(elapsed) < BUDGET_S - 240)); then
    step "memcheck: ops --small" "$OUT/ops.log" 120 "$SAN" "${SANFLAGS[@]}" "$BUILD/cuda_ops_check" --small
  else
    note "memcheck: ops --small             skipped (time: +$(elapsed)s)"
  fi
else
  note "compute-sanitizer: not found, memcheck skipped"
  FAILED=1
fi

# ---- benchmark: ours beside PyTorch ----------------------------------------------------------
# Estimates for an H200 (nothing here has been timed on a GPU yet):
#   cuda_bench     ~55 s: three ViT-B/16 models made on the host (~3 s each); 12 training rows
#                  at batch 64 (eager, graphed, graphed with recomputation; bf16 ~15–25 ms a
#                  step, float32 without TF32 ~10× that) and 8 inference rows at batch 256; each
#                  row 2 warm-up steps, then up to 20 steps or 2 s (at least 3). Limit 120 s.
#   eager          ~45 s: one process (torch + timm import, a bf16 matrix-product ceiling), the
#                  same 10 rows, 2 warm-up + 8 timed steps each. Limit 120 s.
#   torch.compile  ~60–130 s: two rows (training attn bf16, folded inference bf16), a process
#                  each, the first step compiles (40–90 s for training). It gets what is left of
#                  the budget but 25 s, at most 150 s, each row at most 100 s; skipped under 60 s.
#   comparison     ~1 s.
# Intermediate files stay in the build folder; OUTDIR gets bench.log and bench.json.
BENCHLOG="$OUT/bench.log"
BENCHDIR="$BUILD/bench"
PY="${PYTHON:-python3}"
mkdir -p "$BENCHDIR" && rm -f "$BENCHDIR"/*.json
ROWS=repadapter-attn,repadapter-block,infer-plain,infer-unfolded-attn,infer-folded
TORCH_ARGS=(--device cuda --model vit_base_patch16_224 --batch 64 --infer-batch 256 --warmup 2 --repeats 8)
step "bench: ours (cuda_bench)" "$BENCHLOG" 120 "$BUILD/cuda_bench" --config vit_b16 --batch 64 \
  --infer-batch 256 --out "$BENCHDIR/ours.json"
step "bench: PyTorch eager" "$BENCHLOG" 120 "$PY" "$ROOT/bench/pytorch_bench.py" "${TORCH_ARGS[@]}" \
  --methods "$ROWS" --dtypes float32,bf16 --in-process --measure-ceiling --deadline 110 \
  --out "$BENCHDIR/eager.json"
left=$((BUDGET_S - $(elapsed) - 25))
((left > 150)) && left=150
if ((left >= 60)); then
  step "bench: PyTorch torch.compile" "$BENCHLOG" $((left + 10)) "$PY" "$ROOT/bench/pytorch_bench.py" \
    "${TORCH_ARGS[@]}" --methods repadapter-attn,infer-folded --dtypes bf16 --compile \
    --deadline "$left" --timeout 100 --out "$BENCHDIR/compile.json"
else
  note "bench: PyTorch torch.compile         skipped (time: +$(elapsed)s)"
fi
step "bench: comparison" "$BENCHLOG" 30 "$PY" "$ROOT/bench/gpu_compare.py" --ours "$BENCHDIR/ours.json" \
  --eager "$BENCHDIR/eager.json" --compile "$BENCHDIR/compile.json" --json "$OUT/bench.json"
grep -E '^\| (train-speed|infer-speed|fold-equal|train-memory) |^targets:' "$BENCHLOG" >>"$SUMMARY" 2>/dev/null

# The table rows that failed, so summary.txt alone tells the story.
for log in "$OUT/ops.log" "$OUT/model_small.log" "$OUT/model_vitb16.log"; do
  [[ -f "$log" ]] || continue
  n="$(grep -c ' FAIL' "$log" || true)"
  if [[ "$n" != 0 ]]; then
    echo "--- $(basename "$log"): $n failing rows (first 20)" >>"$SUMMARY"
    grep ' FAIL' "$log" | head -20 >>"$SUMMARY"
  fi
done
grep -hE "ERROR SUMMARY|Invalid|out of bounds" "$OUT/model_small.log" "$OUT/ops.log" 2>/dev/null | head -20 >>"$SUMMARY"
note "total: $(elapsed)s; $([[ $FAILED == 0 ]] && echo 'ALL PASSED' || echo 'SOMETHING FAILED')"
exit $FAILED
