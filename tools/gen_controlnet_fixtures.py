"""Reference fixtures for ControlNet (diffusers' ControlNetModel, MultiControlNetModel and the SD / SDXL
ControlNet pipelines).

    tools/.venv/bin/python tools/gen_controlnet_fixtures.py

Run after tools/gen_sd_pipeline_fixtures.py: the tiny SD-1.5, SD-2 and SDXL pipelines of
tests/fixtures/sd/ are the base models. For each, `ControlNetModel.from_unet` builds a ControlNet of the
same shape (the UNet's encoder half, a two-level conditioning embedding that halves the control image to the
16x16 latent grid, 1x1 zero convolutions), every weight redrawn with fan-in scaling -- the zero convolutions
too, or the control branch would add nothing -- and rounded to float16. This writes to
tests/fixtures/controlnet/:

  <name>/                 each ControlNet as `save_pretrained(variant="fp16")` writes it
  control_*.png           32x32 control images (outlines), and control_wide.png (40x24) for the resize case
  expected.safetensors
      residuals: for `sd15_canny` on sample [2,4,16,16] at t=500 with the sd15 prompt embeddings,
      `res_down_<i>` / `res_mid` at conditioning_scale 0.8, `guess_down_<i>` / `guess_mid` in guess mode,
      and `unet_with_residuals`: the sd15 UNet given those residuals (down_block_additional_residuals);
      `<case>_final`: the pipeline's `output_type="latent"` result after 20 steps from `latents`
      (the sd fixtures' latents) for every case in cases.json;
      `control_wide_processed`: diffusers' control image processor on control_wide.png at 32x32 (a
      Lanczos downscale in PIL), [1,3,32,32] in [0,1].
  cases.json              each case: base model, ControlNets, scales, guidance start/end, guess mode, images.
  sd15_canny.safetensors  the sd15_canny ControlNet in the original single-file layout (`control_model.*`, as
                          lllyasviel's ControlNet releases), fp16; diffusers' `ControlNetModel.from_single_file`
                          is asserted to read it back bit for bit.
"""

import json
import os
import shutil
import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from diffusers import (AutoencoderKL, ControlNetModel, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline, UNet2DConditionModel)
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

from gen_sd_pipeline_fixtures import to_half_exact, unet_to_ldm

warnings.filterwarnings("ignore")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SD = os.path.join(ROOT, "tests", "fixtures", "sd")
OUT = os.path.join(ROOT, "tests", "fixtures", "controlnet")
SIZE = 32
STEPS = 20


def outline(kind, w=SIZE, h=SIZE):
    """A white shape outline on black, as an edge detector would draw it."""
    img = Image.new("RGB", (w, h), (0, 0, 0))
    d = ImageDraw.Draw(img)
    if kind == "circle":
        d.ellipse([6, 5, w - 7, h - 6], outline=(255, 255, 255), width=2)
    elif kind == "square":
        d.rectangle([8, 8, w - 9, h - 9], outline=(255, 255, 255), width=2)
    else:  # a triangle with a grey interior line: not purely binary
        d.polygon([(w // 2, 3), (w - 4, h - 4), (3, h - 4)], outline=(255, 255, 255))
        d.line([(w // 2, 3), (w // 2, h - 4)], fill=(128, 128, 128), width=1)
    return img


def controlnet_for(unet, seed):
    torch.manual_seed(seed)
    cn = to_half_exact(ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16)))
    # zero convolutions a tenth of fan-in scale: control moves the result clearly, not to overflow
    zero = [*cn.controlnet_down_blocks, cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]
    for m in zero:
        for p in m.parameters():
            p.copy_((p * 0.1).half().float())
    return cn


def controlnet_to_ldm(sd, cfg):
    """diffusers ControlNetModel -> the original `control_model.*` layout (what diffusers'
    convert_controlnet_checkpoint undoes)."""
    out, body = {}, {}
    for k, v in sd.items():
        if k.startswith("controlnet_cond_embedding."):
            rest = k[len("controlnet_cond_embedding."):]
            if rest.startswith("conv_in."):
                nk = "input_hint_block.0." + rest[len("conv_in."):]
            elif rest.startswith("conv_out."):
                # index 14 in every original file (the 4-level embedding); diffusers reads it there
                nk = "input_hint_block.14." + rest[len("conv_out."):]
            else:
                _, i, tail = rest.split(".", 2)
                nk = f"input_hint_block.{2 * (int(i) + 1)}.{tail}"
        elif k.startswith("controlnet_down_blocks."):
            _, i, tail = k.split(".", 2)
            nk = f"zero_convs.{i}.0.{tail}"
        elif k.startswith("controlnet_mid_block."):
            nk = "middle_block_out.0." + k.split(".", 1)[1]
        else:
            body[k] = v
            continue
        out["control_model." + nk] = v
    for k, v in unet_to_ldm(body, dict(cfg, up_block_types=[])).items():
        out["control_model." + k[len("model.diffusion_model."):]] = v
    return {k: v.half().contiguous() for k, v in out.items()}


def load_base(fam):
    folder = os.path.join(SD, fam)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", variant="fp16", torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", variant="fp16", torch_dtype=torch.float32).eval()
    exp = load_file(os.path.join(SD, f"{fam}_expected.safetensors"))
    return folder, unet, vae, exp


def save_controlnet(cn, name):
    dest = os.path.join(OUT, name)
    cn.to(torch.float16).save_pretrained(dest, variant="fp16", safe_serialization=True)
    cn.to(torch.float32)
    # read back as a user's folder is read, so the reference runs on exactly what was written
    return ControlNetModel.from_pretrained(dest, variant="fp16", torch_dtype=torch.float32).eval()


CASES = {
    # one ControlNet, SD-1.5, DPM++ at guidance 7.5
    "sd15_single": dict(base="sd15", nets=["sd15_canny"], images=["control_circle.png"], scale=[1.0],
                        start=[0.0], end=[1.0], guess_mode=False),
    # guess mode: the ControlNet sees only the conditional half; residuals scaled 0.1 .. 1
    "sd15_guess": dict(base="sd15", nets=["sd15_canny"], images=["control_circle.png"], scale=[0.9],
                       start=[0.0], end=[1.0], guess_mode=True),
    # two ControlNets with their own scales and guidance windows
    "sd2_multi": dict(base="sd2", nets=["sd2_canny", "sd2_depth"], images=["control_square.png", "control_triangle.png"],
                      scale=[1.0, 0.6], start=[0.0, 0.2], end=[1.0, 0.8], guess_mode=False),
    # SDXL (text_time conditioning in the ControlNet too), Euler at guidance 5
    "sdxl_single": dict(base="sdxl", nets=["sdxl_canny"], images=["control_triangle.png"], scale=[0.7],
                        start=[0.0], end=[0.9], guess_mode=False),
}
NET_SEEDS = {"sd15_canny": 11, "sd2_canny": 12, "sd2_depth": 13, "sdxl_canny": 14}


@torch.no_grad()
def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    with open(os.path.join(SD, "cases.json")) as f:
        sd_cases = json.load(f)
    for kind in ("circle", "square", "triangle"):
        outline(kind).save(os.path.join(OUT, f"control_{kind}.png"))
    outline("circle", 40, 24).save(os.path.join(OUT, "control_wide.png"))

    bases = {fam: load_base(fam) for fam in ("sd15", "sd2", "sdxl")}
    nets = {}
    for name, seed in NET_SEEDS.items():
        fam = name.split("_")[0]
        nets[name] = save_controlnet(controlnet_for(bases[fam][1], seed), name)

    out = {}
    # residuals of one ControlNet, and the UNet that takes them
    _, unet, _, exp = bases["sd15"]
    g = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 4, SIZE // 2, SIZE // 2, generator=g)
    ehs = torch.cat([exp["negative_prompt_embeds"], exp["prompt_embeds"]])
    cond = torch.from_numpy(np.asarray(Image.open(os.path.join(OUT, "control_circle.png")), dtype=np.float32) / 255.0)
    cond = cond.permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    out.update(sample=sample, timestep=torch.tensor([500.0]), encoder_hidden_states=ehs, controlnet_cond=cond)
    down, mid = nets["sd15_canny"](sample, 500, encoder_hidden_states=ehs, controlnet_cond=cond, conditioning_scale=0.8,
                                   return_dict=False)
    for i, d in enumerate(down):
        out[f"res_down_{i}"] = d
    out["res_mid"] = mid
    gdown, gmid = nets["sd15_canny"](sample, 500, encoder_hidden_states=ehs, controlnet_cond=cond, conditioning_scale=0.8,
                                     guess_mode=True, return_dict=False)
    for i, d in enumerate(gdown):
        out[f"guess_down_{i}"] = d
    out["guess_mid"] = gmid
    out["unet_with_residuals"] = unet(sample, 500, encoder_hidden_states=ehs, down_block_additional_residuals=down,
                                      mid_block_additional_residual=mid).sample

    # the control image processor's resize (PIL Lanczos) of a 40x24 image to 32x32
    vip = VaeImageProcessor(vae_scale_factor=2, do_convert_rgb=True, do_normalize=False)
    out["control_wide_processed"] = vip.preprocess(Image.open(os.path.join(OUT, "control_wide.png")), height=SIZE, width=SIZE)

    cases = {}
    for case, c in CASES.items():
        folder, unet, vae, exp = bases[c["base"]]
        sdc = sd_cases[c["base"]]
        sdxl = c["base"] == "sdxl"
        cn = [nets[n] for n in c["nets"]]
        controlnet = cn[0] if len(cn) == 1 else MultiControlNetModel(cn)
        images = [Image.open(os.path.join(OUT, p)).convert("RGB") for p in c["images"]]
        if sdxl:
            scheduler = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
            pipe = StableDiffusionXLControlNetPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                                       tokenizer_2=None, unet=unet, controlnet=controlnet, scheduler=scheduler)
            extra = dict(pooled_prompt_embeds=exp["pooled_prompt_embeds"], negative_pooled_prompt_embeds=exp["negative_pooled_prompt_embeds"])
        else:
            scheduler = DPMSolverMultistepScheduler.from_pretrained(folder, subfolder="scheduler")
            pipe = StableDiffusionControlNetPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, controlnet=controlnet,
                                                     scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False)
            extra = {}
        pipe.set_progress_bar_config(disable=True)
        one = len(cn) == 1
        res = pipe(prompt_embeds=exp["prompt_embeds"], negative_prompt_embeds=exp["negative_prompt_embeds"],
                   image=images[0] if one else images, num_inference_steps=STEPS, guidance_scale=sdc["guidance_scale"],
                   height=SIZE, width=SIZE, latents=exp["latents"].clone(), output_type="latent",
                   controlnet_conditioning_scale=c["scale"][0] if one else c["scale"],
                   control_guidance_start=c["start"][0] if one else c["start"],
                   control_guidance_end=c["end"][0] if one else c["end"],
                   guess_mode=c["guess_mode"], **extra).images
        out[f"{case}_final"] = res
        # the same run without control must differ, or the case tests nothing
        assert (res - exp["final_from_latents"]).abs().max() > 1e-2, f"{case}: control changed nothing"
        cases[case] = dict(c, steps=STEPS, height=SIZE, width=SIZE, guidance_scale=sdc["guidance_scale"], solver=sdc["solver"])
        print(f"[{case}] final std={res.std().item():.4f} uncontrolled std={exp['final_from_latents'].std().item():.4f} shift vs uncontrolled={(res - exp['final_from_latents']).abs().max().item():.3f}")

    # the original single-file layout, read back by diffusers' own loader
    sf_path = os.path.join(OUT, "sd15_canny.safetensors")
    save_file(controlnet_to_ldm(nets["sd15_canny"].state_dict(), nets["sd15_canny"].config), sf_path)
    sf = ControlNetModel.from_single_file(sf_path, config=os.path.join(OUT, "sd15_canny"), torch_dtype=torch.float32,
                                          local_files_only=True)
    a, b = nets["sd15_canny"].state_dict(), sf.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), "single-file ControlNet does not read back"

    save_file({k: v.detach().float().contiguous() for k, v in out.items()}, os.path.join(OUT, "expected.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=2)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
