#!/usr/bin/env bash
# Our CUDA build against PyTorch on a lent GPU machine (H100/H200: NVIDIA driver, nvcc and
# PyTorch, but no Rust, no diffusers and no network), in one short run.
#
# Here, on a CPU machine with Rust:
#   tools/gpu_check.sh --pack      # tools/build_cuda.sh --tests, then target/gpu-pack/: the sada
#                                  # binary, the fixture tests as one binary, libcudart and the
#                                  # diffusers wheel (what the GPU machine lacks)
# There, from the repository root, with target/gpu-pack carried along:
#   tools/gpu_check.sh             # results under $OUT (default out/gpu_check)
#
# What it runs, each step under its own time limit (at most 9.7 minutes in all, so it fits one
# 10-minute device call; far less when nothing times out):
#   1. the diffusers fixture comparisons (UNet, VAE, text encoder, SD-1.5/2/XL pipelines, rivals,
#      embedded model) on the GPU with the CPU tests' tolerances: SADA_TEST_DEVICE=cuda;
#   2. seconds per guided evaluation of the full SD-2.1 (512 px) and SDXL (1024 px) UNets with
#      random weights, ours and diffusers 0.34 on the same GPU, fp16;
#   3. 50 DPM-Solver++ steps of the SD-2.1 UNet at 512 px, baseline and SADA (ours), and
#      diffusers' baseline.
# Everything lands in $OUT: results.jsonl (one JSON object per measurement), fixtures.txt,
# summary.md, log.txt. Rehearsal on a CPU machine (same steps, small sizes):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_DTYPE=f32 SD21_SIZE=64 SDXL_SIZE=64 PYTHON=tools/.venv/bin/python \
#       tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=target/gpu-pack

if [ "${1:-}" = "--pack" ]; then
    set -e
    tools/build_cuda.sh --tests
    rm -rf "$PACK" && mkdir -p "$PACK"
    cp target/cuda/release/sada "$PACK/"
    # the newest gpu_fixtures test binary cargo wrote
    cp "$(ls -t target/cuda/release/deps/gpu_fixtures-* | grep -v '\.d$' | head -1)" "$PACK/gpu_fixtures"
    strip "$PACK/sada" "$PACK/gpu_fixtures"
    # build_cuda.sh links the toolkit's libcudart there (the one the binary was linked against)
    cp -L target/cuda/link/libcudart.so "$PACK/libcudart.so.13"
    # the test binary finds its fixtures through the path it was compiled in
    echo "$PWD/crates/sada" > "$PACK/manifest_dir"
    tools/.venv/bin/pip download -q --no-deps -d "$PACK" diffusers==0.34.0
    xz -T2 -6 "$PACK/sada" "$PACK/gpu_fixtures"
    du -ah "$PACK"
    exit 0
fi

OUT=${OUT:-out/gpu_check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
DTYPE=${GPU_CHECK_DTYPE:-f16}
SD21_SIZE=${SD21_SIZE:-512}
SDXL_SIZE=${SDXL_SIZE:-1024}
PYTHON=${PYTHON:-python3}   # the one with PyTorch
mkdir -p "$OUT"
RES=$OUT/results.jsonl
: > "$RES"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
[ -d "$PACK" ] || { log "no $PACK: run tools/gpu_check.sh --pack on the build machine and carry it"; exit 1; }
for f in sada gpu_fixtures; do
    [ -f "$PACK/$f" ] || xz -dk "$PACK/$f.xz" 2>/dev/null \
        || python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$PACK/$f.xz" "$PACK/$f"
    chmod +x "$PACK/$f"
done

log "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
# CUDA 13 libraries come with PyTorch's wheels (site-packages/nvidia/...); libcudart is carried.
LIBS=$("$PYTHON" - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = []
for r in roots:
    for pat in ("nvidia/cu13/lib", "nvidia/*/lib", "torch/lib"):
        dirs += [d for d in sorted(glob.glob(os.path.join(r, pat))) if d not in dirs]
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH=$PWD/$PACK:$LIBS:${LD_LIBRARY_PATH:-}
ldd "$PACK/sada" > "$OUT/ldd.txt" 2>&1
if grep -q "not found" "$OUT/ldd.txt"; then
    log "missing CUDA 13 libraries for our binary: $(grep 'not found' "$OUT/ldd.txt" | tr -s ' \t' ' ' | tr '\n' ';')"
fi
"$PYTHON" -m pip install -q --no-deps --no-index --target "$PACK/py" "$PACK"/diffusers-*.whl >> "$OUT/log.txt" 2>&1
export PYTHONPATH=$PWD/$PACK/py:${PYTHONPATH:-}
log "torch $("$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1 | tail -1), diffusers $("$PYTHON" -c 'import diffusers; print(diffusers.__version__)' 2>&1 | tail -1)"

# 1. fixtures on the GPU, CPU tolerances
want=$(cat "$PACK/manifest_dir")
if [ ! -e "$want" ]; then
    mkdir -p "$(dirname "$want")" && ln -s "$PWD/crates/sada" "$want" || log "cannot link $want: fixture paths will not resolve"
fi
log "fixtures on $DEVICE"
SADA_TEST_DEVICE=$DEVICE timeout "${FIXTURE_LIMIT:-120}" "$PACK/gpu_fixtures" --test-threads=1 > "$OUT/fixtures.txt" 2>&1
rc=$?
echo "{\"step\": \"fixtures\", \"device\": \"$DEVICE\", \"exit\": $rc, \"result\": \"$(grep '^test result' "$OUT/fixtures.txt" | tail -1)\", \"failed\": \"$(grep -E '^test .* FAILED$' "$OUT/fixtures.txt" | sed 's/^test //; s/ \.\.\. FAILED//' | tr '\n' ' ')\"}" >> "$RES"
log "$(tail -1 "$RES")"

# 2 and 3. side by side per guided evaluation, then sampling end to end
bench() {  # bench LIMIT_S ARGS...: ours, then diffusers, same arguments
    local limit=$1; shift
    log "ours: bench-unet $*"
    timeout "$limit" "$PACK/sada" bench-unet --device "$DEVICE" "$@" 2>> "$OUT/log.txt" | tee -a "$RES"
    [ "${PIPESTATUS[0]}" = 0 ] || log "ours failed or timed out ($limit s): $*"
    log "diffusers: $*"
    timeout "$limit" "$PYTHON" tools/bench_unet_torch.py --device "$DEVICE" "$@" 2>> "$OUT/log.txt" | tee -a "$RES"
    [ "${PIPESTATUS[0]}" = 0 ] || log "diffusers failed or timed out ($limit s): $*"
}
bench 60 --config sd21 --size "$SD21_SIZE" --evals 5 --dtype "$DTYPE"
bench 90 --config sdxl --size "$SDXL_SIZE" --evals 5 --dtype "$DTYPE"
bench 80 --config sd21 --size "$SD21_SIZE" --evals 1 --dtype "$DTYPE" --sample-steps 50

python3 - "$RES" > "$OUT/summary.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
for r in rows:
    if r.get("step") == "fixtures":
        print(f"fixtures on {r['device']}: {r['result'] or 'no result'} (exit {r['exit']}) {r['failed']}\n")
evals = [r for r in rows if "s_per_guided_eval" in r]
print("| UNet | ours s/eval (min) | diffusers s/eval (min) | ours / diffusers |")
print("| --- | --- | --- | --- |")
for key in dict.fromkeys((r["config"], r["size"]) for r in evals):
    a = [r for r in evals if (r["config"], r["size"]) == key and r["impl"].startswith("sada")]
    b = [r for r in evals if (r["config"], r["size"]) == key and not r["impl"].startswith("sada")]
    fmt = lambda r: f"{r[0]['s_per_guided_eval']} ({r[0]['min']})" if r else "-"
    ratio = f"{a[0]['min'] / b[0]['min']:.2f}x" if a and b else "-"
    print(f"| {key[0]} {key[1]} px | {fmt(a)} | {fmt(b)} | {ratio} |")
runs = [r for r in rows if "run" in r]
if runs:
    print("\n| 50 DPM++ steps | evaluations | wall s |\n| --- | --- | --- |")
    for r in runs:
        print(f"| {r['impl']} {r['config']} {r['size']} px {r['run']} | {r['evaluations']} | {r['wall_s']} |")
PY
cat "$OUT/summary.md"
