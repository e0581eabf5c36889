#!/usr/bin/env bash
# Our Flux transformer vs diffusers' on the same machine, in one run: FLUX.1-dev's width with
# random weights, 1 double-stream + 2 single-stream blocks (the whole model, 19 + 38 blocks, needs
# 48 GB in f32; time per block is what the comparison measures), one forward at 256 and 512 px
# with 512 text tokens; ours also one token-pruned forward (one image token per 3 x 3 cell).
#
#   tools/bench_flux.sh            (needs tools/.venv: pip install -r tools/requirements.txt)
#
# Writes JSON lines to stdout and a Markdown table to out/bench_flux.md.
echo "host: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) threads, $(grep -m1 -o 'avx512f' /proc/cpuinfo || echo 'no AVX-512')"
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p sada-cli
mkdir -p out
log=out/bench_flux.jsonl
: > "$log"
for size in 256 512; do
  ./target/release/sada bench-flux --size "$size" | tee -a "$log"
  tools/.venv/bin/python tools/bench_flux_torch.py --size "$size" | tee -a "$log"
done
python3 - "$log" > out/bench_flux.md <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| image | tokens (image + text) | ours s/forward | diffusers s/forward | ours / diffusers | ours pruned forward (tokens) | ours peak RSS | diffusers peak RSS |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for size in sorted({r["size"] for r in rows}):
    a = [r for r in rows if r["size"] == size and r["impl"].startswith("sada")][0]
    b = [r for r in rows if r["size"] == size and not r["impl"].startswith("sada")][0]
    print(f"| {size} px | {a['image_tokens']} + {a['text_tokens']} | {a['min']} | {b['min']} | {a['min'] / b['min']:.2f}x | "
          f"{a['pruned_min']} s ({a['tokens_computed']} image tokens) | {a['peak_rss_gib']} GiB | {b['peak_rss_gib']} GiB |")
for r in rows:
    if "share_of_forward_time" in r:
        print(f"\nours at {r['size']} px, share of forward time (tracing spans): " + ", ".join(f"{k} {v:.0%}" for k, v in r["share_of_forward_time"].items()))
PY
cat out/bench_flux.md
