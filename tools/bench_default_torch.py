"""PyTorch (diffusers 0.34.0) timing of the embedded default model, for the Rust-vs-PyTorch
line of the README: the same prompts, guided DPM-Solver++ sampling at batch 1 (2 with CFG),
2 threads, one warm-up image first.

    tools/.venv/bin/python tools/bench_default_torch.py [--steps 50] [--images 4]
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gen_default_model_fixture import load_components  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=4.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    unet, sched, embed = load_components()
    with torch.no_grad():
        ctx = torch.cat([embed([""]), embed(["a small red star at the top left on a blue background"])])

        def sample(seed):
            g = torch.Generator().manual_seed(seed)
            sched.set_timesteps(args.steps)
            x = torch.randn(1, 3, 32, 32, generator=g) * sched.init_noise_sigma
            for t in sched.timesteps:
                out = unet(sched.scale_model_input(torch.cat([x, x]), t), t, encoder_hidden_states=ctx).sample
                u, c = out.chunk(2)
                x = sched.step(u + args.guidance * (c - u), t, x).prev_sample
            return x

        sample(0)
        times = []
        for i in range(args.images):
            t0 = time.perf_counter()
            sample(i + 1)
            times.append(time.perf_counter() - t0)
    print(f"diffusers {args.steps} DPM-Solver++ steps, batch 2 (CFG), 2 threads: "
          f"{sum(times) / len(times):.3f} s per image (min {min(times):.3f}, {args.images} images)")


if __name__ == "__main__":
    main()
