#!/usr/bin/env bash
# Peak memory of a whole `sada generate` run (text encoders, denoiser, decoder) on the full SDXL
# architecture with random weights, at 1024 px, one Euler step, for each --weights type: what a
# user's machine must hold. /usr/bin/time's maximum resident set size, and the run's own
# per-stage times.
#
#   tools/bench_memory.sh [MODELS_DIR] [WEIGHTS...]     (default: out/full_config_models, q8_0 f16)
#
# Makes MODELS_DIR/sdxl with tools/make_full_config_models.py if missing (5 GB, needs tools/.venv).
# Writes out/bench_memory.md.
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-out/full_config_models}
shift || true
types=("${@:-q8_0 f16}")
[ -d "$models/sdxl" ] || tools/.venv/bin/python tools/make_full_config_models.py "$models" sdxl
cargo build -q -p sada-cli
mkdir -p out
source tools/bench_lib.sh
host=$(bench_host)
{
  echo "host: $host"
  echo
  echo "| model | image | weights | peak RSS | loading s | text encoding s | sampling s (1 step) | decoding s |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
} > out/bench_memory.md
for w in ${types[@]}; do
  log=out/bench_memory_$w.log
  /usr/bin/time -v ./target/debug/sada generate --model "$models/sdxl" --prompt "a photograph of an astronaut riding a horse" \
      --steps 1 --accel none --height 1024 --width 1024 --weights "$w" --output "out/sdxl_1024_$w.png" > "$log" 2>&1
  printf '| SDXL (random weights) | 1024 px | %s | %s | %s | %s | %s | %s |\n' "$w" "$(bench_peak "$log")" \
      "$(bench_stage "$log" loading)" "$(bench_stage "$log" 'text encoding')" "$(bench_stage "$log" sampling)" "$(bench_stage "$log" decoding)" >> out/bench_memory.md
done
cat out/bench_memory.md
