#!/usr/bin/env bash
# Seed the fuzz corpora from the test fixtures, then run a target for a while:
#   fuzz/seed.sh && cargo fuzz run config -- -max_total_time=600
# (targets: config, safetensors, single_file; each reads corpus/<target>)
# (cargo-fuzz needs a nightly toolchain, or RUSTC_BOOTSTRAP=1 on a stable one, with
# `--sanitizer none` where the address sanitizer's runtime is missing.)
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/config corpus/safetensors corpus/single_file
for f in $(find ../tests/fixtures ../crates/sada/assets -name '*.json' -size -8k); do
    cp "$f" "corpus/config/$(echo "$f" | tr '/.' '__')"
done
for f in $(find ../tests/fixtures -name '*.safetensors' -size -64k); do
    cp "$f" "corpus/safetensors/$(echo "$f" | tr '/.' '__')"
done
# single-file checkpoints (SD-1, SD-2, SDXL, FLUX.1, a ControlNet): larger than libFuzzer's
# default -max_len, which it raises to the largest seed
for f in ../tests/fixtures/sd/sd15.safetensors ../tests/fixtures/sd/sd2.safetensors ../tests/fixtures/sd/sdxl.safetensors \
    ../tests/fixtures/flux/flux_dev_single.safetensors ../tests/fixtures/controlnet/sd15_canny.safetensors; do
    cp "$f" "corpus/single_file/$(echo "$f" | tr '/.' '__')"
done
echo "corpus: $(ls corpus/config | wc -l) configs, $(ls corpus/safetensors | wc -l) safetensors files, $(ls corpus/single_file | wc -l) single-file checkpoints"
