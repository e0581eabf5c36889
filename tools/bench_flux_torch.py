"""PyTorch/diffusers side of `tools/bench_flux.sh`: diffusers' FluxTransformer2DModel at FLUX.1-dev's
width (3072 channels, 24 heads of 128, T5 width 4096, pooled 768, guidance embedding) with random
weights and as few blocks as `sada bench-flux` builds, one forward per size (batch 1, 512 text
tokens, as FluxPipeline calls it for dev), on the CPU with 2 threads; peak memory.

    tools/.venv/bin/python tools/bench_flux_torch.py --size 256 --double 1 --single 2

Prints a JSON line shaped like `sada bench-flux`'s.
"""
import argparse
import json
import resource
import time

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--double", type=int, default=1)
    ap.add_argument("--single", type=int, default=2)
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--evals", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model = FluxTransformer2DModel(num_layers=a.double, num_single_layers=a.single, guidance_embeds=True).eval()
    init_s = time.time() - t0
    l = a.size // 8
    latents = FluxPipeline._pack_latents(torch.randn(1, 16, l, l), 1, 16, l, l)
    img_ids = FluxPipeline._prepare_latent_image_ids(1, l // 2, l // 2, "cpu", torch.float32)
    args = dict(hidden_states=latents, encoder_hidden_states=torch.randn(1, a.text_tokens, 4096),
                pooled_projections=torch.randn(1, 768), timestep=torch.tensor([0.5]), img_ids=img_ids,
                txt_ids=torch.zeros(a.text_tokens, 3), guidance=torch.tensor([3.5]), return_dict=False)
    times = []
    with torch.no_grad():
        for i in range(a.evals + 1):
            t = time.time()
            model(**args)
            if i > 0:
                times.append(time.time() - t)
    print(json.dumps({"impl": f"diffusers {__import__('diffusers').__version__} / torch {torch.__version__}",
                      "config": f"flux.1-dev width, {a.double} double + {a.single} single blocks, F32", "size": a.size,
                      "text_tokens": a.text_tokens, "s_per_eval": round(sum(times) / len(times), 3), "min": round(min(times), 3),
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024, 2),
                      "init_s": round(init_s, 1)}))


if __name__ == "__main__":
    main()
