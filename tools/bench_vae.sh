#!/usr/bin/env bash
# Our autoencoder vs diffusers' AutoencoderKL on the same machine, in one run: the SD VAE
# configuration (SD-1.x/2.x/XL share the network) with random weights, decoding and encoding
# at 512 and 1024 px, one image, the machine's threads on both sides.
#
#   tools/bench_vae.sh [SIZES...]     (needs tools/.venv: pip install -r tools/requirements.txt)
#
# Writes JSON lines to out/bench_vae.jsonl and a Markdown table to out/bench_vae.md.
echo "host: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) threads, $(grep -m1 -o 'avx512f' /proc/cpuinfo || echo 'no AVX-512')"
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p sada-cli
mkdir -p out
log=out/bench_vae.jsonl
: > "$log"
sizes=("${@:-512 1024}")
for size in ${sizes[@]}; do
  ./target/debug/sada bench-vae --size "$size" --evals 2 --encode | tee -a "$log"
  tools/.venv/bin/python tools/bench_vae_torch.py --size "$size" --evals 2 --encode | tee -a "$log"
done
python3 - "$log" > out/bench_vae.md <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| size | op | ours s (min) | diffusers s (min) | ours / diffusers | ours peak RSS | diffusers peak RSS |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for size in sorted({r["size"] for r in rows}):
    for op in ("decode", "encode"):
        a = [r for r in rows if r["size"] == size and r["op"] == op and r["impl"].startswith("sada")]
        b = [r for r in rows if r["size"] == size and r["op"] == op and not r["impl"].startswith("sada")]
        if a and b:
            a, b = a[0], b[0]
            print(f"| {size} px | {op} | {a['s_per_call']} ({a['min']}) | {b['s_per_call']} ({b['min']}) | {a['min'] / b['min']:.2f}x | {a['peak_rss_gib']} GiB | {b['peak_rss_gib']} GiB |")
PY
cat out/bench_vae.md
