"""Generate UNet2DConditionModel / AutoencoderKL reference fixtures from diffusers.

Run from the repository root:

    python -m venv tools/.venv
    tools/.venv/bin/pip install -r tools/requirements.txt
    tools/.venv/bin/python tools/gen_unet_fixtures.py

Everything is float32 on CPU with fixed seeds (torch.manual_seed(0) per case), so
re-running overwrites the outputs with byte-identical files.

Writes, for each UNet case tests/fixtures/unet/<name>/ (sd15_tiny, sd2_tiny, sdxl_tiny):
  unet/config.json, unet/diffusion_pytorch_model.safetensors   (save_pretrained)
  scheduler/scheduler_config.json                              (the real model's config)
  forward.safetensors   sample [2,4,H,W], timestep [1] (=377), encoder_hidden_states [2,7,32],
                        (sdxl: text_embeds [2,16], time_ids [2,6]), output [2,4,H,W],
                        timestep_b [1] (=951), output_b [2,4,H,W]
  pipeline.safetensors  prompt_embeds, negative_prompt_embeds [1,7,32],
                        (sdxl: pooled_prompt_embeds, negative_pooled_prompt_embeds [1,16],
                        add_time_ids [1,6]), latents [1,4,H,W] (unscaled, the pipeline's
                        `latents` argument), final_dpm / final_euler [1,4,H,W]: the latents
                        after the 50-step, guidance 7.5 denoising loop of
                        StableDiffusionPipeline / StableDiffusionXLPipeline with
                        DPMSolverMultistepScheduler / EulerDiscreteScheduler .from_config(cfg).
                        The script asserts that this loop is bit-identical to running
                        diffusers' own pipeline (output_type="latent") on the same inputs.
  sdxl_tiny/keys.txt    every tensor name of the SDXL UNet's safetensors with its shape.
and for the VAE case tests/fixtures/vae/tiny/:
  vae/config.json, vae/diffusion_pytorch_model.safetensors
  io.safetensors        latents [1,4,6,8], decoded = decode(latents / scaling_factor).sample,
                        image [1,3,16,24] in [-1,1], encoded_mean / encoded_std of encode(image).

Weights: every parameter is re-initialised deterministically. Linear/conv weights
~ N(0,1) / sqrt(fan_in) (fan_in = in_features * kernel area), all other biases
~ 0.05 * N(0,1); GroupNorm/LayerNorm weight = 1 + 0.1 * N(0,1), bias = 0.1 * N(0,1).
A flat 0.05 * N(0,1) for everything also gives non-zero outputs (std ~0.33), but then
the timestep and text conditioning change the output by only ~2% of its std; the
fan-in scaling makes every conditioning path (timestep, encoder_hidden_states, SDXL
text_embeds and time_ids) move the output by 15-70% of its std, so the fixtures
actually test those paths.

Model widths (block_out_channels) are deliberately narrow so each case folder stays
well under 2 MB; every structural property (block types, layers per block,
transformer layers per block, head counts, linear projection, upcast attention,
cross-attention dim, SDXL additional embeddings, norm groups) is what a real SD
model config exercises.
"""

import json
import os
import shutil

import numpy as np
import torch
from torch import nn
import diffusers
import safetensors
from safetensors.torch import save_file, load_file
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import logging as diffusers_logging

SEED = 0
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNET_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "unet")
VAE_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "vae")

NUM_STEPS = 50
GUIDANCE = 7.5
TEXT_LEN = 7
CROSS_DIM = 32
POOLED_DIM = 16
TIMESTEP_A = 377.0
TIMESTEP_B = 951.0
SDXL_TIME_IDS = [64.0, 64.0, 0.0, 0.0, 64.0, 64.0]  # orig_h, orig_w, crop_top, crop_left, target_h, target_w

# Real scheduler_config.json contents of the corresponding model folders (as in
# gen_scheduler_fixtures.py, without _diffusers_version).
from published_configs import SD15, SD21, SDXL  # noqa: E402


def _without_version(cfg):
    return {k: v for k, v in cfg.items() if k != "_diffusers_version"}


SD15_SCHED = _without_version(SD15)
SD21_SCHED = _without_version(SD21)
SDXL_SCHED = _without_version(SDXL)

# Note on attention_head_dim: when num_attention_heads is not given, diffusers uses
# attention_head_dim as the NUMBER OF HEADS per block (legacy naming); the per-head
# dimension is channels / heads. A tuple must have one entry per down block.
UNET_CASES = [
    {
        "name": "sd15_tiny",
        "sched": SD15_SCHED,
        "hw": (8, 8),
        "sdxl": False,
        "config": dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=2,
            cross_attention_dim=CROSS_DIM,
            attention_head_dim=8,
            norm_num_groups=8,
        ),
    },
    {
        "name": "sd2_tiny",
        "sched": SD21_SCHED,
        "hw": (8, 12),  # non-square latent: H=8, W=12
        "sdxl": False,
        "config": dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 24, 24),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=2,
            cross_attention_dim=CROSS_DIM,
            # (2, 4) is rejected for three down blocks; the last entry also sets the mid block.
            attention_head_dim=(2, 4, 4),
            use_linear_projection=True,
            upcast_attention=True,
            norm_num_groups=8,
        ),
    },
    {
        "name": "sdxl_tiny",
        "sched": SDXL_SCHED,
        "hw": (8, 8),
        "sdxl": True,
        "config": dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 24),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=2,
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=CROSS_DIM,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=POOLED_DIM + 6 * 8,
            norm_num_groups=8,
        ),
    },
]

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(16, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=16,
    scaling_factor=0.18215,
)


@torch.no_grad()
def reinit(model: nn.Module):
    """Re-initialise every parameter deterministically (uses the global torch RNG)."""
    for module in model.modules():
        params = list(module.named_parameters(recurse=False))
        if not params:
            continue
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            for pname, p in params:
                if pname == "weight":
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.1 * torch.randn_like(p))
        else:
            for _, p in params:
                if p.dim() >= 2:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn_like(p) / fan_in**0.5)
                else:
                    p.copy_(0.05 * torch.randn_like(p))


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def save_tensors(tensors, path):
    out = {}
    for k, v in tensors.items():
        assert v.dtype == torch.float32, (k, v.dtype)
        out[k] = v.detach().contiguous().clone()
    save_file(out, path)


def stats(t):
    return f"std={t.std().item():.4f} absmax={t.abs().max().item():.4f} finite={bool(torch.isfinite(t).all())}"


def dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


@torch.no_grad()
def denoise(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds, added=None):
    """StableDiffusion(XL)Pipeline's denoising loop (diffusers 0.34.0), classifier-free guidance."""
    scheduler.set_timesteps(NUM_STEPS)
    latents = latents * scheduler.init_noise_sigma
    encoder_hidden_states = torch.cat([negative_prompt_embeds, prompt_embeds])
    added_cond_kwargs = None
    if added is not None:
        added_cond_kwargs = {
            "text_embeds": torch.cat([added["negative_pooled_prompt_embeds"], added["pooled_prompt_embeds"]]),
            "time_ids": torch.cat([added["add_time_ids"], added["add_time_ids"]]),
        }
    for t in scheduler.timesteps:
        latent_model_input = torch.cat([latents] * 2)
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        noise_pred = unet(
            latent_model_input,
            t,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=added_cond_kwargs,
            return_dict=False,
        )[0]
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        noise_pred = noise_pred_uncond + GUIDANCE * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
    return latents


@torch.no_grad()
def run_real_pipeline(unet, scheduler, pipe, sdxl, h, w):
    """The same run through diffusers' own pipeline (no VAE/text encoders, latent output)."""
    common = dict(
        prompt_embeds=pipe["prompt_embeds"],
        negative_prompt_embeds=pipe["negative_prompt_embeds"],
        latents=pipe["latents"].clone(),
        height=h * 8,
        width=w * 8,
        num_inference_steps=NUM_STEPS,
        guidance_scale=GUIDANCE,
        output_type="latent",
    )
    if sdxl:
        p = StableDiffusionXLPipeline(
            vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
            unet=unet, scheduler=scheduler,
        )
        # The pipeline builds add_time_ids from (original_size, crops, target_size) =
        # ((8h, 8w), (0, 0), (8h, 8w)); check that it is what we stored.
        assert pipe["add_time_ids"].tolist() == [[8.0 * h, 8.0 * w, 0.0, 0.0, 8.0 * h, 8.0 * w]]
        common.update(
            pooled_prompt_embeds=pipe["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=pipe["negative_pooled_prompt_embeds"],
        )
    else:
        p = StableDiffusionPipeline(
            vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    p.set_progress_bar_config(disable=True)
    return p(**common).images


@torch.no_grad()
def run_unet_case(case):
    name, sdxl = case["name"], case["sdxl"]
    h, w = case["hw"]
    case_dir = os.path.join(UNET_DIR, name)
    fresh_dir(case_dir)

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**case["config"])
    reinit(unet)
    unet.eval()
    unet.save_pretrained(os.path.join(case_dir, "unet"), safe_serialization=True)

    os.makedirs(os.path.join(case_dir, "scheduler"))
    with open(os.path.join(case_dir, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(case["sched"], f, indent=2)
        f.write("\n")

    # --- single forward passes ---
    sample = torch.randn(2, 4, h, w)
    ehs = torch.randn(2, TEXT_LEN, CROSS_DIM)
    fwd = {
        "sample": sample,
        "timestep": torch.tensor([TIMESTEP_A], dtype=torch.float32),
        "encoder_hidden_states": ehs,
        "timestep_b": torch.tensor([TIMESTEP_B], dtype=torch.float32),
    }
    added = None
    if sdxl:
        fwd["text_embeds"] = torch.randn(2, POOLED_DIM)
        fwd["time_ids"] = torch.tensor([SDXL_TIME_IDS, SDXL_TIME_IDS], dtype=torch.float32)
        added = {"text_embeds": fwd["text_embeds"], "time_ids": fwd["time_ids"]}
    fwd["output"] = unet(sample, fwd["timestep"], ehs, added_cond_kwargs=added).sample
    fwd["output_b"] = unet(sample, fwd["timestep_b"], ehs, added_cond_kwargs=added).sample
    save_tensors(fwd, os.path.join(case_dir, "forward.safetensors"))
    print(f"[{name}] output   {stats(fwd['output'])}")
    print(f"[{name}] output_b {stats(fwd['output_b'])}")

    # --- full pipeline denoising loops ---
    pipe = {
        "prompt_embeds": torch.randn(1, TEXT_LEN, CROSS_DIM),
        "negative_prompt_embeds": torch.randn(1, TEXT_LEN, CROSS_DIM),
    }
    added_pipe = None
    if sdxl:
        pipe["pooled_prompt_embeds"] = torch.randn(1, POOLED_DIM)
        pipe["negative_pooled_prompt_embeds"] = torch.randn(1, POOLED_DIM)
        pipe["add_time_ids"] = torch.tensor([SDXL_TIME_IDS], dtype=torch.float32)
        added_pipe = {k: pipe[k] for k in ("pooled_prompt_embeds", "negative_pooled_prompt_embeds", "add_time_ids")}
    pipe["latents"] = torch.randn(1, 4, h, w)
    for key, cls in (("final_dpm", DPMSolverMultistepScheduler), ("final_euler", EulerDiscreteScheduler)):
        scheduler = cls.from_config(dict(case["sched"]))
        pipe[key] = denoise(
            unet, scheduler, pipe["latents"], pipe["prompt_embeds"], pipe["negative_prompt_embeds"], added_pipe
        )
        print(f"[{name}] {key:11s} {stats(pipe[key])}")
        assert torch.isfinite(pipe[key]).all(), f"{name} {key} not finite"
        # Cross-check the hand-written loop against the real diffusers pipeline.
        reference = run_real_pipeline(unet, cls.from_config(dict(case["sched"])), pipe, sdxl, h, w)
        assert torch.equal(reference, pipe[key]), f"{name} {key}: loop differs from diffusers pipeline"
    save_tensors(pipe, os.path.join(case_dir, "pipeline.safetensors"))

    if sdxl:
        weights = load_file(os.path.join(case_dir, "unet", "diffusion_pytorch_model.safetensors"))
        with open(os.path.join(case_dir, "keys.txt"), "w") as f:
            for k in sorted(weights):
                f.write(f"{k} {list(weights[k].shape)}\n")

    print(f"[{name}] {sum(p.numel() for p in unet.parameters())} params, folder {dir_size(case_dir)} bytes")


@torch.no_grad()
def run_vae_case():
    case_dir = os.path.join(VAE_DIR, "tiny")
    fresh_dir(case_dir)
    torch.manual_seed(SEED)
    vae = AutoencoderKL(**VAE_CONFIG)
    reinit(vae)
    vae.eval()
    vae.save_pretrained(os.path.join(case_dir, "vae"), safe_serialization=True)

    latents = torch.randn(1, 4, 6, 8)
    decoded = vae.decode(latents / vae.config.scaling_factor).sample
    image = torch.rand(1, 3, 16, 24) * 2.0 - 1.0
    dist = vae.encode(image).latent_dist
    io = {
        "latents": latents,
        "decoded": decoded,
        "image": image,
        "encoded_mean": dist.mean,
        "encoded_std": dist.std,
    }
    save_tensors(io, os.path.join(case_dir, "io.safetensors"))
    for k in ("decoded", "encoded_mean", "encoded_std"):
        print(f"[vae] {k:12s} {list(io[k].shape)} {stats(io[k])}")
    print(f"[vae] {sum(p.numel() for p in vae.parameters())} params, folder {dir_size(case_dir)} bytes")


@torch.no_grad()
def run_vae_tiled_case():
    """`enable_tiling()` on the saved tiny VAE (sample_size 16: 16-pixel image tiles, 8-latent
    tiles, a quarter overlapped and blended): a batch of two latents [2,4,14,20] -> `decoded`
    [2,3,28,40], and a batch of two images [2,3,28,40] -> `encoded_mean` / `encoded_std`
    [2,4,14,20], in tiles/tiled.safetensors (the untiled outputs too, for scale)."""
    case_dir = os.path.join(VAE_DIR, "tiny")
    vae = AutoencoderKL.from_pretrained(os.path.join(case_dir, "vae")).eval()
    g = torch.Generator().manual_seed(SEED + 1)
    latents = torch.randn(2, 4, 14, 20, generator=g)
    image = torch.rand(2, 3, 28, 40, generator=g) * 2.0 - 1.0
    io = {"latents": latents, "image": image,
          "untiled_decoded": vae.decode(latents / vae.config.scaling_factor).sample}
    vae.enable_tiling()
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == (16, 8)
    io["decoded"] = vae.decode(latents / vae.config.scaling_factor).sample
    dist = vae.encode(image).latent_dist
    io.update(encoded_mean=dist.mean, encoded_std=dist.std)
    save_tensors(io, os.path.join(case_dir, "tiled.safetensors"))
    for k in ("decoded", "encoded_mean", "encoded_std"):
        print(f"[vae tiled] {k:12s} {list(io[k].shape)} {stats(io[k])}")


def main():
    torch.set_num_threads(1)
    diffusers_logging.set_verbosity_error()
    torch.use_deterministic_algorithms(True)
    print(
        f"diffusers {diffusers.__version__}, torch {torch.__version__}, "
        f"numpy {np.__version__}, safetensors {safetensors.__version__}"
    )
    os.makedirs(UNET_DIR, exist_ok=True)
    os.makedirs(VAE_DIR, exist_ok=True)
    for case in UNET_CASES:
        run_unet_case(case)
    run_vae_case()
    run_vae_tiled_case()


if __name__ == "__main__":
    main()
