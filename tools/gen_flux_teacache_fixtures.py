"""Reference runs of TeaCache on the tiny Flux dev fixture (run after tools/gen_flux_fixtures.py).

    tools/.venv/bin/python tools/gen_flux_teacache_fixtures.py

TeaCache ships no package: its FLUX integration (ali-vilab/TeaCache, TeaCache4FLUX) replaces
FluxTransformer2DModel.forward. The same algorithm is written out here around diffusers 0.34's
forward: embed, compute the first double block's modulated image input (norm1), and per call
(= per step, dev runs no CFG batch) accumulate poly(rel L1 change of that input) with the
authors' FLUX coefficients; the first and last calls always compute, otherwise a call computes
(and resets the sum) once it reaches rel_l1_thresh; a skipped call adds the residual (block stack
output - input) of the last computed one, then norm_out and proj_out run as usual.

Writes tests/fixtures/flux/teacache.safetensors: for thresholds 0.25 and 0.6, `t<thr>_final`
(unpacked latents after 50 steps from the fixture's pipe_prompt_embeds, seed 7) and `t<thr>_mask`
(1 = computed step).
"""

import os
import types

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = os.path.join(ROOT, "tests", "fixtures", "flux", "dev")
COEFFICIENTS = [4.98651651e+02, -2.83781631e+02, 5.58554382e+01, -3.82021401e+00, 2.64230861e-01]
STEPS = 50


def teacache_forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                     img_ids=None, txt_ids=None, guidance=None, joint_attention_kwargs=None, return_dict=True, **_):
    hidden_states = self.x_embedder(hidden_states)
    timestep = timestep.to(hidden_states.dtype) * 1000
    guidance = guidance.to(hidden_states.dtype) * 1000 if guidance is not None else None
    temb = (self.time_text_embed(timestep, pooled_projections) if guidance is None
            else self.time_text_embed(timestep, guidance, pooled_projections))
    encoder_hidden_states = self.context_embedder(encoder_hidden_states)
    image_rotary_emb = self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))

    modulated = self.transformer_blocks[0].norm1(hidden_states, emb=temb)[0]
    if self.cnt == 0 or self.cnt == self.num_steps - 1:
        compute = True
        self.acc = 0.0
    else:
        rel = ((modulated - self.prev).abs().mean() / self.prev.abs().mean()).item()
        self.acc += np.poly1d(COEFFICIENTS)(rel)
        compute = self.acc >= self.thresh
        if compute:
            self.acc = 0.0
    self.prev = modulated
    self.cnt += 1
    self.mask.append(1.0 if compute else 0.0)

    if compute:
        start = hidden_states.clone()
        for block in self.transformer_blocks:
            encoder_hidden_states, hidden_states = block(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                                                         temb=temb, image_rotary_emb=image_rotary_emb)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        for block in self.single_transformer_blocks:
            hidden_states = block(hidden_states=hidden_states, temb=temb, image_rotary_emb=image_rotary_emb)
        hidden_states = hidden_states[:, encoder_hidden_states.shape[1]:, ...]
        self.residual = hidden_states - start
    else:
        hidden_states = hidden_states + self.residual
    hidden_states = self.norm_out(hidden_states, temb)
    return (self.proj_out(hidden_states),)


@torch.no_grad()
def main():
    exp = load_file(os.path.join(ROOT, "tests", "fixtures", "flux", "expected.safetensors"))
    t = FluxTransformer2DModel.from_pretrained(DEV, subfolder="transformer", variant="fp16", torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(DEV, subfolder="vae", variant="fp16", torch_dtype=torch.float32).eval()
    t.forward = types.MethodType(teacache_forward, t)
    out = {}
    for thresh in (0.25, 0.6):
        t.cnt, t.num_steps, t.thresh, t.acc, t.prev, t.residual, t.mask = 0, STEPS, thresh, 0.0, None, None, []
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(DEV, subfolder="scheduler")
        pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                            tokenizer_2=None, transformer=t)
        pipe.set_progress_bar_config(disable=True)
        final = pipe(prompt_embeds=exp["pipe_prompt_embeds"], pooled_prompt_embeds=exp["pipe_pooled_prompt_embeds"],
                     height=32, width=48, num_inference_steps=STEPS, guidance_scale=3.5,
                     generator=torch.Generator().manual_seed(7), output_type="latent").images
        key = f"t{thresh}"
        out[f"{key}_final"] = pipe._unpack_latents(final, 32, 48, pipe.vae_scale_factor).contiguous()
        out[f"{key}_mask"] = torch.tensor(t.mask)
        print(thresh, "computed", int(sum(t.mask)), "of", len(t.mask))
    save_file(out, os.path.join(ROOT, "tests", "fixtures", "flux", "teacache.safetensors"))


if __name__ == "__main__":
    main()
