"""PyTorch/diffusers side of `tools/bench_unet.sh`: the SD-2.1 UNet configuration with random
weights, seconds per guided evaluation (uncond + cond in one batch of 2, 77 text tokens, as
diffusers' pipeline calls it) and peak memory, on CPU with 2 threads.

    tools/.venv/bin/python tools/bench_unet_torch.py --size 256 --evals 3 [--sample-steps 50]

Prints JSON lines shaped like `sada bench-unet`'s.
"""
import argparse
import json
import resource
import time

import torch
from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

SD21_UNET = {"act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 1024, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"], "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4, "sample_size": 96, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "upcast_attention": True, "use_linear_projection": True}
SD21_SCHEDULER = {"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


# torch op name -> the category it is reported under (matched by substring, first match wins)
CATEGORIES = [("convolution", ["conv"]), ("linear", ["addmm", "linear", "mm", "bmm", "matmul"]),
              ("attention (SDPA)", ["scaled_dot_product", "flash_attention", "_efficient_attention"]),
              ("norms", ["group_norm", "layer_norm", "native_group_norm", "native_layer_norm"]),
              ("copies", ["copy_", "contiguous", "clone", "cat", "to"]),
              ("elementwise", ["add", "mul", "silu", "gelu", "sigmoid", "div", "sub", "exp", "sin", "cos", "neg", "pow", "upsample"])]


def profile(unet, x, text, size):
    """Self CPU time of one guided evaluation by op category (leaf ops only, so nothing is counted twice)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch.no_grad(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        unet(torch.cat([x, x]), 500, encoder_hidden_states=text)
    totals = {}
    for ev in prof.key_averages():
        name = ev.key.replace("aten::", "")
        cat = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")
        totals[cat] = totals.get(cat, 0.0) + ev.self_cpu_time_total
    whole = sum(totals.values())
    print(json.dumps({"impl": "diffusers (torch.profiler)", "size": size,
                      "share_of_eval_time": {k: round(v / whole, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--evals", type=int, default=3)
    ap.add_argument("--sample-steps", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's time by op category for one evaluation")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET).eval()
    lat = args.size // 8
    x = torch.randn(1, 4, lat, lat)
    text = torch.randn(2, 77, 1024)
    times = []
    with torch.no_grad():
        for i in range(args.evals + 1):
            t = time.perf_counter()
            out = unet(torch.cat([x, x]), 500, encoder_hidden_states=text).sample
            u, c = out.chunk(2)
            _ = u + 7.5 * (c - u)
            if i > 0:
                times.append(time.perf_counter() - t)
    print(json.dumps({"impl": f"diffusers {__import__('diffusers').__version__} / torch {torch.__version__}", "size": args.size,
                      "s_per_guided_eval": round(sum(times) / len(times), 3), "min": round(min(times), 3), "peak_rss_gib": round(peak_rss_gib(), 2)}))
    if args.profile:
        profile(unet, x, text, args.size)
    if args.sample_steps:
        sched = DPMSolverMultistepScheduler.from_config(SD21_SCHEDULER)
        sched.set_timesteps(args.sample_steps)
        lat_x = x * sched.init_noise_sigma
        t0 = time.perf_counter()
        with torch.no_grad():
            for t in sched.timesteps:
                out = unet(torch.cat([lat_x, lat_x]), t, encoder_hidden_states=text).sample
                u, c = out.chunk(2)
                lat_x = sched.step(u + 7.5 * (c - u), t, lat_x).prev_sample
        print(json.dumps({"impl": "diffusers", "size": args.size, "run": "baseline", "steps": args.sample_steps,
                          "evaluations": args.sample_steps, "wall_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
