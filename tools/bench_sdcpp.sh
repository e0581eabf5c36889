#!/usr/bin/env bash
# sada beside stable-diffusion.cpp (the CPU anchor) on one checkpoint: the full SD-2.1
# architecture with random weights (tools/make_full_config_models.py), written by `sada convert`
# as one single file that both read -- f16 safetensors, and a q8_0 GGUF (stable-diffusion.cpp
# keeps its q8_0 blocks as they are; sada too). Same prompt, size, steps, Euler, CFG 7.5, one
# process per run: time per guided step (sampling time / steps), VAE decode time, and peak
# resident memory of the whole process (/usr/bin/time).
#
#   tools/bench_sdcpp.sh [MODELS_DIR] [SIZE] [STEPS]     (default: out/full_config_models 512 4)
#
# Builds stable-diffusion.cpp with tools/build_sdcpp.sh if out/sdcpp is missing. Writes
# out/bench_sdcpp.md.
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-out/full_config_models}
size=${2:-512}
steps=${3:-4}
sd=out/sdcpp/build/bin/sd-cli
[ -d "$models/sd21" ] || tools/.venv/bin/python tools/make_full_config_models.py "$models" sd21
[ -x $sd ] || tools/build_sdcpp.sh out/sdcpp
cargo build -q --release -p sada-cli
sada=./target/release/sada
mkdir -p out/bench_sdcpp
[ -f out/bench_sdcpp/sd21_f16.safetensors ] || $sada convert --model "$models/sd21" --all --weights f16 --out out/bench_sdcpp/sd21_f16.safetensors
[ -f out/bench_sdcpp/sd21_q8_0.gguf ] || $sada convert --model "$models/sd21" --all --weights q8_0 --out out/bench_sdcpp/sd21_q8_0.gguf
threads=$(nproc)
source tools/bench_lib.sh
host=$(bench_host)
prompt="a photograph of an astronaut riding a horse"
{
  echo "host: $host; SD-2.1 (random weights), ${size} px, $steps Euler steps, CFG 7.5"
  echo
  echo "| runner | file | weights | peak RSS | s per guided step | VAE decode s |"
  echo "| --- | --- | --- | --- | --- | --- |"
} > out/bench_sdcpp.md
for run in "f16 sd21_f16.safetensors" "q8_0 sd21_q8_0.gguf"; do
  set -- $run
  w=$1 file=out/bench_sdcpp/$2
  log=out/bench_sdcpp/sdcpp_$w.log
  /usr/bin/time -v $sd -m "$file" -p "$prompt" -W "$size" -H "$size" --steps "$steps" --cfg-scale 7.5 \
      --sampling-method euler -s 42 -t "$threads" -o "out/bench_sdcpp/sdcpp_$w.png" > "$log" 2>&1
  # "sampling completed, taking 123.45s", "decode_first_stage completed, taking 12.34s"
  sampling=$(sed -n 's/.*sampling completed, taking \([0-9.]*\)s.*/\1/p' "$log" | tail -1)
  decode=$(sed -n 's/.*decode_first_stage completed, taking \([0-9.]*\)s.*/\1/p' "$log" | tail -1)
  printf '| stable-diffusion.cpp | %s | %s | %s | %.2f | %s |\n' "$2" "$w" "$(bench_peak "$log")" "$(echo "$sampling / $steps" | bc -l)" "$decode" >> out/bench_sdcpp.md
  log=out/bench_sdcpp/sada_$w.log
  /usr/bin/time -v $sada generate --model "$file" --prompt "$prompt" --width "$size" --height "$size" --steps "$steps" \
      --guidance-scale 7.5 --solver euler --accel none --seed 42 --weights "$w" --output "out/bench_sdcpp/sada_$w.png" > "$log" 2>&1
  printf '| sada | %s | %s | %s | %.2f | %s |\n' "$2" "$w" "$(bench_peak "$log")" "$(echo "$(bench_stage "$log" sampling) / $steps" | bc -l)" \
      "$(bench_stage "$log" decoding)" >> out/bench_sdcpp.md
done
cat out/bench_sdcpp.md
