"""The embedded default model run by diffusers, for the end-to-end check of our pipeline
(tokenizer -> CLIP text encoder -> guided UNet -> DPM-Solver++) on the shipped weights:
tests/fixtures/default_model/pipeline.safetensors. Rerun after retraining the model.

    tools/.venv/bin/python tools/gen_default_model_fixture.py
"""

import json
import os

import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel, PreTrainedTokenizerFast
from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

ROOT = os.path.join(os.path.dirname(__file__), "..")
MODEL = os.path.join(ROOT, "crates", "sada", "assets", "default_model")
OUT = os.path.join(ROOT, "tests", "fixtures", "default_model")
PROMPTS = ["a small red star at the top left on a blue background",
           "a large white ring in the center on a green background"]
STEPS, GUIDANCE = 12, 4.0


def load_components():
    """The shipped folder's parts, loaded by diffusers/transformers, and a prompt embedder."""
    tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(MODEL, "tokenizer"))
    text = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder")).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet")).eval()
    sched = DPMSolverMultistepScheduler.from_pretrained(os.path.join(MODEL, "scheduler"))

    def embed(texts):
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        return text(ids).last_hidden_state

    return unet, sched, embed


def main():
    torch.manual_seed(0)
    unet, sched, embed = load_components()

    noise = torch.randn(len(PROMPTS), 3, 32, 32)
    with torch.no_grad():
        cond, uncond = embed(PROMPTS), embed([""] * len(PROMPTS))
        ctx = torch.cat([uncond, cond])
        sched.set_timesteps(STEPS)
        x = noise * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            out = unet(inp, t, encoder_hidden_states=ctx).sample
            u, c = out.chunk(2)
            x = sched.step(u + GUIDANCE * (c - u), t, x).prev_sample
    os.makedirs(OUT, exist_ok=True)
    save_file({"noise": noise.contiguous(), "prompt_embeds": cond.contiguous(),
               "negative_prompt_embeds": uncond.contiguous(), "images": x.contiguous()},
              os.path.join(OUT, "pipeline.safetensors"))
    with open(os.path.join(OUT, "settings.json"), "w") as f:
        json.dump({"prompts": PROMPTS, "steps": STEPS, "guidance_scale": GUIDANCE}, f, indent=1)


if __name__ == "__main__":
    main()
