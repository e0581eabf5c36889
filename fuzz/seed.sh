#!/usr/bin/env bash
# Seed the fuzz corpora from the test fixtures, then run a target for a while:
#   fuzz/seed.sh && cargo fuzz run config -- -max_total_time=600
# (cargo-fuzz needs a nightly toolchain, or RUSTC_BOOTSTRAP=1 on a stable one, with
# `--sanitizer none` where the address sanitizer's runtime is missing.)
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/config corpus/safetensors
for f in $(find ../tests/fixtures ../crates/sada/assets -name '*.json' -size -8k); do
    cp "$f" "corpus/config/$(echo "$f" | tr '/.' '__')"
done
for f in $(find ../tests/fixtures -name '*.safetensors' -size -64k); do
    cp "$f" "corpus/safetensors/$(echo "$f" | tr '/.' '__')"
done
echo "corpus: $(ls corpus/config | wc -l) configs, $(ls corpus/safetensors | wc -l) safetensors files"
