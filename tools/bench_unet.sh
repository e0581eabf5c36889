#!/usr/bin/env bash
# Our UNet vs diffusers on the same machine, in one run: the SD-2.1 UNet configuration with
# random weights at 256 and 512 px and the embedded default model's UNet (its trained weights,
# 32 x 32 pixels), then (optionally) 50 DPM-Solver++ steps end to end with and without SADA at
# 256 px.
#
#   tools/bench_unet.sh [--sample]     (needs tools/.venv: pip install -r tools/requirements.txt)
#
# Writes JSON lines to stdout and a Markdown table to out/bench_unet.md, with each side's share of
# an evaluation by operation (ours from tracing spans, diffusers' from torch.profiler).
echo "host: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) threads, $(grep -m1 -o 'avx512f' /proc/cpuinfo || echo 'no AVX-512')"
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p sada-cli
mkdir -p out
log=out/bench_unet.jsonl
: > "$log"
for size in 256 512; do
  ./target/debug/sada bench-unet --size "$size" --evals 3 | tee -a "$log"
  tools/.venv/bin/python tools/bench_unet_torch.py --size "$size" --evals 3 --profile | tee -a "$log"
done
./target/debug/sada bench-unet --config default --evals 50 | tee -a "$log"
tools/.venv/bin/python tools/bench_unet_torch.py --config default --evals 50 --profile 2>/dev/null | tee -a "$log"
if [ "${1:-}" = "--sample" ]; then
  ./target/debug/sada bench-unet --size 256 --evals 1 --sample-steps 50 | tee -a "$log"
  tools/.venv/bin/python tools/bench_unet_torch.py --size 256 --evals 1 --sample-steps 50 | tee -a "$log"
fi
python3 - "$log" > out/bench_unet.md <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
evals = [r for r in rows if "s_per_guided_eval" in r]
print("| image | ours s/eval (min) | diffusers s/eval (min) | ours / diffusers | ours peak RSS | diffusers peak RSS |")
print("| --- | --- | --- | --- | --- | --- |")
for size in sorted({r["size"] for r in evals}, key=lambda s: (s == 32, s)):
    a = [r for r in evals if r["size"] == size and r["impl"].startswith("sada")][0]
    b = [r for r in evals if r["size"] == size and not r["impl"].startswith("sada")][0]
    name = "embedded model, 32 x 32 px" if a["config"].startswith("default") else f"{size} px"
    print(f"| {name} | {a['s_per_guided_eval']} ({a['min']}) | {b['s_per_guided_eval']} ({b['min']}) | {a['min'] / b['min']:.2f}x | {a['peak_rss_gib']} GiB | {b['peak_rss_gib']} GiB |")
shares = [r for r in rows if "share_of_eval_time" in r]
for r in shares:
    who = "diffusers (torch.profiler, self time by op)" if r["impl"].startswith("diffusers") else "ours (tracing spans, nested)"
    print(f"\n{who} at {r['size']} px{' (embedded model)' if r['size'] == 32 else ''}, share of evaluation time: " + ", ".join(f"{k} {v:.0%}" for k, v in r["share_of_eval_time"].items()))
runs = [r for r in rows if "run" in r]
if runs:
    print("\n| 256 px, 50 DPM++ steps | evaluations | wall s |")
    print("| --- | --- | --- |")
    for r in runs:
        print(f"| {r['impl']} {r['run']} | {r['evaluations']} | {r['wall_s']} |")
PY
cat out/bench_unet.md
