"""The embedded model's ControlNet run by diffusers, for the end-to-end check of our controlled
pipeline on the shipped weights (pixel space, a one-level conditioning embedding, which the tiny
SD fixtures do not cover): tests/fixtures/default_model/controlnet.safetensors and
controlnet_image.png. Rerun after retraining the ControlNet.

    tools/.venv/bin/python tools/gen_default_controlnet_fixture.py
"""

import os

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from diffusers import ControlNetModel

from gen_default_model_fixture import MODEL, OUT, PROMPTS, STEPS, GUIDANCE, load_components


def main():
    torch.manual_seed(1)
    unet, sched, embed = load_components()
    cn = ControlNetModel.from_pretrained(os.path.join(MODEL, "controlnet")).eval()
    # an outline at a place the first caption does not name
    img = Image.new("RGB", (32, 32))
    ImageDraw.Draw(img).rectangle([17, 17, 29, 29], outline=(255, 255, 255))
    path = os.path.join(OUT, "controlnet_image.png")
    img.save(path)
    control = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    n = len(PROMPTS)
    noise = torch.randn(n, 3, 32, 32)
    with torch.no_grad():
        cond, uncond = embed(PROMPTS), embed([""] * n)
        ctx = torch.cat([uncond, cond])
        image = control.repeat(2 * n, 1, 1, 1)
        sched.set_timesteps(STEPS)
        x = noise * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            down, mid = cn(inp, t, encoder_hidden_states=ctx, controlnet_cond=image, conditioning_scale=1.0, return_dict=False)
            out = unet(inp, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid).sample
            u, c = out.chunk(2)
            x = sched.step(u + GUIDANCE * (c - u), t, x).prev_sample
    save_file({"noise": noise.contiguous(), "prompt_embeds": cond.contiguous(), "negative_prompt_embeds": uncond.contiguous(),
               "images": x.contiguous()}, os.path.join(OUT, "controlnet.safetensors"))


if __name__ == "__main__":
    main()
