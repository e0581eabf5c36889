"""Reference runs of SADA's rival accelerators on the tiny UNet fixtures.

Run from the repository root after tools/gen_unet_fixtures.py (it reads that script's
fixtures and leaves them untouched):

    tools/.venv/bin/pip install -r tools/requirements.txt
    tools/.venv/bin/python tools/gen_rival_fixtures.py

Writes tests/fixtures/rivals/<case>.safetensors for case in sd15_tiny, sd2_tiny, with the
final latents of 20-step, guidance-7.5 DPM-Solver++ runs from the case's pipeline inputs:

  deepcache_i3_b0, deepcache_i2_b1, deepcache_i4_b3
      diffusers' StableDiffusionPipeline with the authors' DeepCache plug-in
      (`DeepCache.DeepCacheSDHelper`, PyPI DeepCache 0.1.1) at cache_interval / cache_branch_id
      = 3/0, 2/1, 4/3. The plug-in patches the UNet's block forwards; this is the authors' code.
  adaptive, adaptive_mask
      the AdaptiveDiffusion loop (threshold 0.01, max_skip_steps 4) written out here in
      Python over diffusers' scheduler, transcribing the authors' `sparse_pipeline.py`
      denoising loop and `estimate_skipping` (their pipeline file is not a package, so it is
      transcribed rather than imported); adaptive_mask holds 1 for computed steps, 0 for
      reused ones.
"""

import json
import os

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
UNET_DIR = os.path.join(ROOT, "tests", "fixtures", "unet")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "rivals")
STEPS = 20
GUIDANCE = 7.5
CASES = ["sd15_tiny", "sd2_tiny"]
DEEPCACHE = [(3, 0), (2, 1), (4, 3)]


def load_case(name):
    unet = UNet2DConditionModel.from_pretrained(os.path.join(UNET_DIR, name, "unet")).eval()
    with open(os.path.join(UNET_DIR, name, "scheduler", "scheduler_config.json")) as f:
        sched = json.load(f)
    pipe = load_file(os.path.join(UNET_DIR, name, "pipeline.safetensors"))
    return unet, sched, pipe


def pipeline(unet, sched):
    p = StableDiffusionPipeline(
        vae=None, text_encoder=None, tokenizer=None, unet=unet,
        scheduler=DPMSolverMultistepScheduler.from_config(dict(sched)),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    p.set_progress_bar_config(disable=True)
    return p


@torch.no_grad()
def run_pipeline(p, inputs):
    _, _, h, w = inputs["latents"].shape
    return p(
        prompt_embeds=inputs["prompt_embeds"],
        negative_prompt_embeds=inputs["negative_prompt_embeds"],
        latents=inputs["latents"].clone(),
        height=8 * h,
        width=8 * w,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        output_type="latent",
    ).images


@torch.no_grad()
def deepcache(unet, sched, inputs, interval, branch):
    from DeepCache import DeepCacheSDHelper

    p = pipeline(unet, sched)
    helper = DeepCacheSDHelper(pipe=p)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        return run_pipeline(p, inputs)
    finally:
        helper.disable()


@torch.no_grad()
def adaptive(unet, sched, inputs, threshold=0.01, max_skip_steps=4):
    """The authors' loop: always compute while at most 3 latents are recorded, then follow the
    mask decided after the previous step; reuse the last raw UNet output on skipped steps."""
    scheduler = DPMSolverMultistepScheduler.from_config(dict(sched))
    scheduler.set_timesteps(STEPS)
    latents = inputs["latents"] * scheduler.init_noise_sigma
    ehs = torch.cat([inputs["negative_prompt_embeds"], inputs["prompt_embeds"]])
    prev_latents, mask, diff_list, noise_pred_cache = [], [], [], None
    computed = []

    def estimate_skipping(latent):
        prev_diff, prev_prev_diff = diff_list[-1], diff_list[-2]
        cur_diff = (latent - prev_latents[-1]).abs().mean()
        diff_list.append(cur_diff)
        if len(mask) > 4 and not any(mask[-max_skip_steps:]):
            return True
        if abs((cur_diff + prev_prev_diff) / 2 - prev_diff) <= prev_diff * threshold:
            return False
        return True

    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        if len(prev_latents) <= 3:
            noise_pred_cache = unet(model_in, t, encoder_hidden_states=ehs, return_dict=False)[0]
            computed.append(1.0)
            if len(prev_latents) > 1:
                diff_list.append((prev_latents[-1] - prev_latents[-2]).abs().mean())
        elif mask[-1]:
            noise_pred_cache = unet(model_in, t, encoder_hidden_states=ehs, return_dict=False)[0]
            computed.append(1.0)
        else:
            computed.append(0.0)
        u, c = noise_pred_cache.chunk(2)
        latents = scheduler.step(u + GUIDANCE * (c - u), t, latents, return_dict=False)[0]
        if len(prev_latents) >= 3:
            mask.append(bool(estimate_skipping(latents)))
        prev_latents.append(latents)
    return latents, torch.tensor(computed)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    diffusers_logging.set_verbosity_error()
    os.makedirs(OUT_DIR, exist_ok=True)
    for name in CASES:
        unet, sched, inputs = load_case(name)
        out = {}
        # the plain 20-step run, to show each method changes something
        out["baseline"] = run_pipeline(pipeline(unet, sched), inputs)
        for interval, branch in DEEPCACHE:
            key = f"deepcache_i{interval}_b{branch}"
            out[key] = deepcache(unet, sched, inputs, interval, branch)
            err = ((out[key] - out["baseline"]).abs().max() / out["baseline"].abs().max()).item()
            print(f"[{name}] {key}: relative change from the baseline {err:.3e}")
        out["adaptive"], out["adaptive_mask"] = adaptive(unet, sched, inputs)
        print(f"[{name}] adaptive: {int(out['adaptive_mask'].sum())} of {STEPS} steps computed")
        save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT_DIR, f"{name}.safetensors"))


if __name__ == "__main__":
    main()
