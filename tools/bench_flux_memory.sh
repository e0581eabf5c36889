#!/usr/bin/env bash
# A whole FLUX.1-dev run at full size on this machine: the 19 + 38 block transformer (random
# weights from tools/make_full_config_models.py, f16, 24 GB), converted by `sada convert` into a
# city96-layout GGUF file per weights type and given with --denoiser; T5-XXL, CLIP-L and the VAE
# from the folder, held in the same type (--weights). One step at 256 px, 512 T5 tokens. Peak =
# /usr/bin/time's maximum resident set size of the whole process; the run's own stage times.
#
#   tools/bench_flux_memory.sh [MODELS_DIR] [WEIGHTS...]     (default: out/full_config_models, q8_0 q4_k)
#
# Makes MODELS_DIR/flux if missing (34 GB, needs tools/.venv). Writes out/bench_flux_memory.md.
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-out/full_config_models}
shift || true
types=("${@:-q8_0 q4_k}")
[ -d "$models/flux" ] || tools/.venv/bin/python tools/make_full_config_models.py "$models" flux
cargo build -q --release -p sada-cli
sada=./target/release/sada
mkdir -p out/bench_flux
source tools/bench_lib.sh
host=$(bench_host)
{
  echo "host: $host"
  echo
  echo "| model | image | weights | transformer file | peak RSS | loading s | text encoding s | sampling s (1 step) | decoding s |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} > out/bench_flux_memory.md
for w in ${types[@]}; do
  gguf=out/bench_flux/flux1-dev-$w.gguf
  [ -f "$gguf" ] || /usr/bin/time -f "convert: %e s, peak %M KB" $sada convert --model "$models/flux" --weights "$w" --out "$gguf"
  log=out/bench_flux/run_$w.log
  /usr/bin/time -v $sada generate --model "$models/flux" --denoiser "$gguf" --weights "$w" \
      --prompt "a photograph of an astronaut riding a horse" --steps 1 --accel none --height 256 --width 256 \
      --output "out/bench_flux/flux_256_$w.png" > "$log" 2>&1
  printf '| FLUX.1-dev (random weights) | 256 px | %s | %s (%s) | %s | %s | %s | %s | %s |\n' "$w" "$(basename "$gguf")" \
      "$(du -h "$gguf" | cut -f1)" "$(bench_peak "$log")" "$(bench_stage "$log" loading)" "$(bench_stage "$log" 'text encoding')" \
      "$(bench_stage "$log" sampling)" "$(bench_stage "$log" decoding)" \
      >> out/bench_flux_memory.md
done
cat out/bench_flux_memory.md
