#!/usr/bin/env bash
# Builds `sada` with candle's CUDA backend on a machine with no GPU and no system CUDA: the
# compiler, headers and libraries come from PyPI into tools/.cuda-venv (pinned in
# tools/requirements-cuda.txt). Kernels are compiled to PTX for sm_90 (H100/H200), which newer
# GPUs JIT-compile. The binary links the CUDA libraries by name (candle links them dynamically):
# at run time it needs the driver's libcuda.so.1 and libcudart/libcublas/libcublasLt/libcurand/
# libnvrtc of CUDA 13 on LD_LIBRARY_PATH (a CUDA 13 PyTorch install ships them).
#
#   tools/build_cuda.sh                 # -> target/cuda/release/sada
#   CUDA_COMPUTE_CAP=100 tools/build_cuda.sh
#   tools/build_cuda.sh --tests         # also the fixture tests as one binary (tests/gpu_fixtures.rs)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/tools/.cuda-venv
if [ ! -x "$VENV/bin/pip" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r "$ROOT/tools/requirements-cuda.txt"
CUDA=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[ -x "$CUDA/bin/nvcc" ] || { echo "build_cuda.sh: no nvcc under $CUDA" >&2; exit 1; }

# The linker wants unversioned names; the wheels ship only the versioned ones. The driver library
# (libcuda.so.1) comes with the GPU's driver, not with the toolkit, so we link against a stub that
# defines every driver entry point cudarc declares (each answers CUDA_ERROR_NO_DEVICE); the real
# driver replaces it at run time.
LINK=$ROOT/target/cuda/link
mkdir -p "$LINK"
for lib in cudart cublas cublasLt curand nvrtc; do
    so=$(ls "$CUDA/lib/lib$lib.so."* | grep -v alt | head -1)
    ln -sf "$so" "$LINK/lib$lib.so"
done
CUDARC=$(cargo metadata --format-version 1 --features sada/cuda --manifest-path "$ROOT/Cargo.toml" \
    | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')
grep -oP '^pub unsafe fn \Kcu\w+' "$CUDARC/src/driver/sys/mod.rs" | sort -u \
    | sed 's/.*/int &(void) { return 100; }/' > "$LINK/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/cuda_stub.c"

export PATH=$CUDA/bin:$PATH CUDA_HOME=$CUDA CUDA_PATH=$CUDA CUDA_ROOT=$CUDA
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# $ORIGIN: libraries copied next to the binary are found without LD_LIBRARY_PATH.
export RUSTFLAGS="-L native=$LINK -C link-arg=-Wl,-rpath,\$ORIGIN"
cd "$ROOT"
cargo build --release --features cuda -p sada-cli --target-dir target/cuda
if [ "${1:-}" = "--tests" ]; then
    cargo test --release --features cuda -p sada --target-dir target/cuda --test gpu_fixtures --no-run
fi
echo "built: $ROOT/target/cuda/release/sada (CUDA 13.0, sm_$CUDA_COMPUTE_CAP)"
