"""torch's CPU normal generator, as diffusers' randn_tensor draws Stable Diffusion's initial
noise: `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=float32)`.

    tools/.venv/bin/python tools/gen_noise_fixtures.py

Writes tests/fixtures/noise/torch_randn.safetensors: for each seed and shape below the values
torch 2.7.1 draws (key `s{seed}_{shape}`), and three calls on one generator (`seq0..2`), which
continue the stream and carry the cached normal of the scalar path across calls.
"""

import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "noise", "torch_randn.safetensors")
SEEDS = [0, 1, 42, 2**32 + 5, 2**63 - 1]
SHAPES = [(1,), (3,), (15,), (16,), (17,), (31,), (2, 4, 5, 7), (1, 4, 32, 32)]


def main():
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    out = {}
    for seed in SEEDS:
        for shape in SHAPES:
            g = torch.Generator("cpu").manual_seed(seed)
            out[f"s{seed}_" + "x".join(map(str, shape))] = torch.randn(shape, generator=g, dtype=torch.float32)
    g = torch.Generator("cpu").manual_seed(7)
    for i, shape in enumerate([(5,), (1, 4, 8, 8), (3,)]):
        out[f"seq{i}"] = torch.randn(shape, generator=g, dtype=torch.float32)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {len(out)} tensors")
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)


if __name__ == "__main__":
    main()
