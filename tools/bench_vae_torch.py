"""PyTorch/diffusers side of `tools/bench_vae.sh`: diffusers' AutoencoderKL on the SD, SDXL or
Flux configuration with random weights, seconds per decode (and encode) of an image size and
peak memory, on the CPU with the machine's threads. The configurations are read from
crates/sada/src/models/vae/presets.rs, so both sides build the same network.

    tools/.venv/bin/python tools/bench_vae_torch.py --size 512 --evals 2 [--encode] [--tiling]

Prints JSON lines shaped like `sada bench-vae`'s.
"""
import argparse
import json
import os
import re
import resource
import time

import torch
from diffusers import AutoencoderKL


def preset(name):
    src = open(os.path.join(os.path.dirname(__file__), "..", "crates/sada/src/models/vae/presets.rs")).read()
    m = re.search(r'pub const %s: &str = r#"(.*?)"#;' % name.upper(), src, re.S)
    return {k: v for k, v in json.loads(m.group(1)).items() if not k.startswith("_")}


def timed(evals, f):
    f()
    times = []
    for _ in range(evals):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return sum(times) / len(times), min(times)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="sd", choices=["sd", "sdxl", "flux"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--evals", type=int, default=2)
    ap.add_argument("--encode", action="store_true")
    ap.add_argument("--tiling", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    vae = AutoencoderKL(**preset(a.config)).eval()
    if a.tiling:
        vae.enable_tiling()
    init_s = time.perf_counter() - t0
    label = f"{a.config}, cpu, {torch.get_num_threads()} threads{', tiled' if a.tiling else ''}"
    l = a.size // 8
    z = torch.randn(a.batch, vae.config.latent_channels, l, l)
    mean, best = timed(a.evals, lambda: vae.decode(z).sample)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(json.dumps({"impl": f"diffusers {__import__('diffusers').__version__} (torch {torch.__version__})", "config": label,
                      "op": "decode", "size": a.size, "batch": a.batch, "s_per_call": round(mean, 4), "min": round(best, 4),
                      "peak_rss_gib": round(peak, 2), "init_s": round(init_s, 1)}), flush=True)
    if a.encode:
        x = torch.rand(a.batch, 3, a.size, a.size) * 2 - 1
        mean, best = timed(a.evals, lambda: vae.encode(x).latent_dist.mean)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
        print(json.dumps({"impl": f"diffusers {__import__('diffusers').__version__} (torch {torch.__version__})", "config": label,
                          "op": "encode", "size": a.size, "batch": a.batch, "s_per_call": round(mean, 4),
                          "min": round(best, 4), "peak_rss_gib": round(peak, 2)}), flush=True)


if __name__ == "__main__":
    main()
