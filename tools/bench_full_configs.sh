#!/usr/bin/env bash
# Time and memory of the full SD-2.1 and SDXL architectures from a prompt, with random weights
# (no real weights can be downloaded here; images are noise, only time and memory count).
#
#   tools/bench_full_configs.sh [MODELS_DIR]     (needs tools/.venv for the random folders)
#
# Makes MODELS_DIR/{sd21,sdxl} with tools/make_full_config_models.py if missing (9 GB), then:
# SD-2.1 at 512 px, 20 DPM-Solver++ steps, baseline and SADA side by side (SADA's range scaled to
# 20 steps: its published acc_range needs 50), and SDXL at 1024 px, 2 Euler steps, baseline only
# (one guided step takes minutes on a small CPU). Each run prints per-stage times and peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-out/full_config_models}
[ -d "$models/sd21" ] && [ -d "$models/sdxl" ] || tools/.venv/bin/python tools/make_full_config_models.py "$models"
cargo build -q --release -p sada-cli
mkdir -p out
prompt="a photograph of an astronaut riding a horse on Mars, highly detailed"
./target/release/sada generate --model "$models/sd21" --prompt "$prompt" --steps 20 \
    --accel "sada:acc_range=[4,19],lagrange_step=12" --compare --height 512 --width 512 --output out/sd21_512_compare.png
./target/release/sada generate --model "$models/sdxl" --prompt "$prompt" --steps 2 --accel none \
    --height 1024 --width 1024 --output out/sdxl_1024_2steps.png
