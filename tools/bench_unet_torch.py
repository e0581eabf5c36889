"""PyTorch/diffusers side of `tools/bench_unet.sh` and `tools/gpu_check.sh`: the SD-2.1 or SDXL
UNet configuration with random weights (or the embedded default model's UNet, `--config default`:
its trained weights, 3 x 32 x 32 pixels, 16 text tokens), seconds per guided evaluation (uncond +
cond in one batch of 2, 77 text tokens, as diffusers' pipeline calls it) and peak memory; on the CPU with 2 threads,
or on a GPU in fp16/bf16 with PyTorch's SDPA as diffusers' pipelines run there.

    tools/.venv/bin/python tools/bench_unet_torch.py --size 256 --evals 3 [--sample-steps 50]
    python tools/bench_unet_torch.py --config sdxl --size 1024 --device cuda --dtype fp16

Prints JSON lines shaped like `sada bench-unet`'s. The UNet configurations are read from
crates/sada/src/models/unet/presets.rs, so both sides build the same network.
"""
import argparse
import json
import os
import re
import resource
import time

import torch
from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

def rust_preset(rel_path, name):
    """A configuration our side builds from (a Rust raw-string constant), so both sides agree."""
    src = open(os.path.join(os.path.dirname(__file__), "..", rel_path)).read()
    m = re.search(r'pub const %s: &str = r#"(.*?)"#;' % name.upper(), src, re.S)
    return {k: v for k, v in json.loads(m.group(1)).items() if not k.startswith("_")}


def unet_preset(name):
    """The UNet `sada bench-unet --config NAME` builds."""
    return rust_preset("crates/sada/src/models/unet/presets.rs", name)


def scheduler_preset(name):
    """The scheduler config `sada bench-unet --config NAME` samples with."""
    return rust_preset("crates/sada/src/solvers/presets.rs", name)


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


# torch op name -> the category it is reported under (matched by substring, first match wins)
CATEGORIES = [("convolution", ["conv"]), ("linear", ["addmm", "linear", "mm", "bmm", "matmul"]),
              ("attention (SDPA)", ["scaled_dot_product", "flash_attention", "_efficient_attention"]),
              ("norms", ["group_norm", "layer_norm", "native_group_norm", "native_layer_norm"]),
              ("copies", ["copy_", "contiguous", "clone", "cat", "to"]),
              ("elementwise", ["add", "mul", "silu", "gelu", "sigmoid", "div", "sub", "exp", "sin", "cos", "neg", "pow", "upsample"])]


def profile(evaluate, size):
    """Self CPU time of one guided evaluation by op category (leaf ops only, so nothing is counted twice)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch.no_grad(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        evaluate()
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
    ap.add_argument("--config", choices=["sd21", "sdxl", "default"], default="sd21")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--evals", type=int, default=3)
    ap.add_argument("--sample-steps", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's time by op category for one evaluation (CPU)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    cuda = dev.type == "cuda"
    if not cuda:
        torch.set_num_threads(2)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if args.config == "default":
        path = os.path.join(os.path.dirname(__file__), "..", "crates/sada/assets/default_model/unet")
        unet = UNet2DConditionModel.from_pretrained(path).eval().to(dev, dtype)
        args.size, lat, tokens = 32, 32, 16  # pixel space at its trained size, 16-token prompts
    else:
        with dev:  # initialise the random weights where they will run (SDXL's 2.6B take a minute on a CPU)
            unet = UNet2DConditionModel(**unet_preset(args.config)).eval().to(dev, dtype)
        lat, tokens = args.size // 8, 77
    init_s = time.perf_counter() - t0
    x = torch.randn(1, unet.config.in_channels, lat, lat, device=dev, dtype=dtype)
    text_dim = unet.config.cross_attention_dim
    text = torch.randn(2, tokens, text_dim, device=dev, dtype=dtype)
    added = None
    if unet.config.addition_embed_type == "text_time":
        s_ = float(args.size)
        added = {"text_embeds": torch.randn(2, 1280, device=dev, dtype=dtype),
                 "time_ids": torch.tensor([[s_, s_, 0, 0, s_, s_]] * 2, device=dev, dtype=dtype)}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def guided(latents, t):
        out = unet(torch.cat([latents, latents]), t, encoder_hidden_states=text, added_cond_kwargs=added).sample
        u, c = out.chunk(2)
        return u + 7.5 * (c - u)

    times = []
    with torch.no_grad():
        for i in range(args.evals + 1):
            sync()
            t = time.perf_counter()
            guided(x, 500)
            sync()
            if i > 0:
                times.append(time.perf_counter() - t)
    label = f"{args.config}, {dev.type}, {args.dtype}"
    row = {"impl": f"diffusers {__import__('diffusers').__version__} / torch {torch.__version__}", "config": label, "size": args.size,
           "s_per_guided_eval": round(sum(times) / len(times), 4), "min": round(min(times), 4), "peak_rss_gib": round(peak_rss_gib(), 2),
           "init_s": round(init_s, 1)}
    if cuda:
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        row["gpu"] = torch.cuda.get_device_name(dev)
    print(json.dumps(row), flush=True)
    if args.profile and not cuda:
        profile(lambda: guided(x, 500), args.size)
    if args.sample_steps:
        sched = DPMSolverMultistepScheduler.from_config(scheduler_preset("sd21" if args.config == "default" else args.config))
        sched.set_timesteps(args.sample_steps)
        lat_x = x * sched.init_noise_sigma
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            for t in sched.timesteps:
                lat_x = sched.step(guided(lat_x, t), t, lat_x).prev_sample
        sync()
        print(json.dumps({"impl": "diffusers", "config": label, "size": args.size, "run": "baseline", "steps": args.sample_steps,
                          "evaluations": args.sample_steps, "wall_s": round(time.perf_counter() - t0, 2)}), flush=True)


if __name__ == "__main__":
    main()
