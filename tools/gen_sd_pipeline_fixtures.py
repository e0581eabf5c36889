"""Reference fixtures for the Stable Diffusion 1.5 / 2.x / XL pipelines driven from a prompt.

    tools/.venv/bin/python tools/gen_sd_pipeline_fixtures.py

For three tiny random-weight pipelines shaped like the real ones (every structural property that
the weights cannot tell a single-file loader -- norm groups 32, SD-1's 8 heads, 64-wide heads for
the linear-projection families, SDXL's 256-wide time embedding -- set as the real model has it),
with CLIP text encoders over the real 49,408-token vocabulary, this writes to tests/fixtures/sd/:

  <fam>/                 the pipeline as `save_pretrained(variant="fp16")` writes it (model_index.json,
                         scheduler/ with the scheduler class the real checkpoint ships, unet/, vae/,
                         text_encoder[_2]/, tokenizer[_2]/), minus tokenizer vocab.json / merges.txt:
                         they are the crate's embedded CLIP vocabulary (crates/sada/assets/clip) and the
                         tests write them back, so the 2 MB vocabulary is not committed four more times.
  <fam>.safetensors      the same weights in the original LDM / SGM single-file layout (fp16), as
                         ComfyUI / A1111 keep them; diffusers' `from_single_file(config=<fam>/)` is
                         asserted to load it back bit for bit, and to give the same latents.
  <fam>_expected.safetensors
      prompt_embeds, negative_prompt_embeds (+ pooled_prompt_embeds, negative_pooled_prompt_embeds
      for SDXL) from `encode_prompt(PROMPT, negative_prompt=NEGATIVE)`; clip_skip_prompt_embeds
      with clip_skip=1; latents: the `latents` argument; final_from_latents and final_from_seed:
      the pipeline's `output_type="latent"` result after STEPS steps at the family's default guidance
      from those latents and from `torch.Generator("cpu").manual_seed(SEED)`; image_from_latents:
      `(vae.decode(final / scaling_factor) / 2 + 0.5).clamp(0, 1)`.
  cases.json             the prompt, negative prompt, seed, steps, size, guidance and solver of each.

Weights are drawn with fan-in scaling (so every conditioning path moves the output) and rounded to
float16, so the fp16 files hold exactly the float32 model the reference runs.  SD-1/2 sample with
DPMSolverMultistepScheduler.from_config(the shipped config), SDXL with its shipped Euler scheduler:
SADA's users' choice, and `sada generate`'s default per family.
"""

import json
import os
import re
import shutil
import sys
import tempfile
import warnings

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
from diffusers.loaders import single_file_utils as sfu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_unet_fixtures import reinit  # noqa: E402
from published_configs import SD15, SD21, SDXL  # noqa: E402

warnings.filterwarnings("ignore")
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "sd")
VOCAB = os.path.join(ROOT, "crates", "sada", "assets", "clip")

PROMPT = "a photograph of an astronaut riding a horse on Mars, highly detailed, 8k!"
NEGATIVE = "blurry, low quality"
SEED = 42
STEPS = 20
SIZE = 32  # pixels: 16x16 latents through the 2-level VAE

# ----------------------------------------------------------------------------------------------
# Reverse conversion: diffusers -> the original LDM / SGM single-file layout (what diffusers'
# single_file_utils undoes; checked below by loading the result with from_single_file)
# ----------------------------------------------------------------------------------------------
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

RESNET_D2L = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
UNET_TOP_D2L = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",      # SDXL
    "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2",  # projection class emb
}


def _resnet_suffix(rest):
    head, _, tail = rest.partition(".")  # e.g. "conv1", "weight"
    for d, l in RESNET_D2L:
        if head == d:
            return f"{l}.{tail}"
    raise KeyError(rest)


def unet_to_ldm(sd, cfg):
    """diffusers UNet2DConditionModel state dict -> `model.diffusion_model.*` keys (no tensor changes)."""
    lpb = cfg["layers_per_block"]
    assert isinstance(lpb, int), "per-level layers_per_block not handled (not used by SD1/2/XL)"
    up_has_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"([a-z_]+(?:\.linear_[12])?|conv_in|conv_out|conv_norm_out)\.(weight|bias)", k)
        if m and m.group(1) in UNET_TOP_D2L:
            nk = f"{UNET_TOP_D2L[m.group(1)]}.{m.group(2)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
            b, j, rest = int(m[1]), int(m[2]), m[3]
            nk = f"input_blocks.{1 + b * (lpb + 1) + j}.0.{_resnet_suffix(rest)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", k):
            b, j, rest = int(m[1]), int(m[2]), m[3]
            nk = f"input_blocks.{1 + b * (lpb + 1) + j}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k):
            b, rest = int(m[1]), m[2]
            nk = f"input_blocks.{(b + 1) * (lpb + 1)}.0.op.{rest}"
        elif m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", k):
            nk = f"middle_block.{2 * int(m[1])}.{_resnet_suffix(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", k):
            nk = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
            b, j, rest = int(m[1]), int(m[2]), m[3]
            nk = f"output_blocks.{b * (lpb + 1) + j}.0.{_resnet_suffix(rest)}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", k):
            b, j, rest = int(m[1]), int(m[2]), m[3]
            nk = f"output_blocks.{b * (lpb + 1) + j}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", k):
            b, rest = int(m[1]), m[2]
            nk = f"output_blocks.{b * (lpb + 1) + lpb}.{2 if up_has_attn[b] else 1}.conv.{rest}"
        else:
            raise KeyError(f"unmapped UNet key {k}")
        out[UNET_PREFIX + nk] = v
    return out


VAE_ATTN_D2L = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(sd, cfg):
    """diffusers AutoencoderKL -> `first_stage_model.*`; mid attention Linear [C,C] -> conv [C,C,1,1]."""
    n = len(cfg["block_out_channels"])
    out = {}
    for k, v in sd.items():
        if k.startswith(("quant_conv.", "post_quant_conv.")) or re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.\w+", k):
            nk = k
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", k):
            nk = f"{m[1]}.norm_out.{m[2]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
            nk = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", k):
            nk = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
            nk = f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", k):
            nk = f"decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", k):
            nk = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", k):
            nk = f"{m[1]}.mid.attn_1.{VAE_ATTN_D2L[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                v = v[:, :, None, None]  # Linear [out,in] -> Conv2d 1x1 [out,in,1,1]
        else:
            raise KeyError(f"unmapped VAE key {k}")
        out[VAE_PREFIX + nk] = v.contiguous()
    return out


def clip_to_ldm(sd, prefix, max_pos):
    """OpenAI CLIP-L (SD1 `cond_stage_model.transformer.`, SDXL `conditioner.embedders.0.transformer.`):
    HF transformers names are kept verbatim; real files also carry the int64 position_ids buffer."""
    out = {prefix + k: v for k, v in sd.items()}
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(max_pos, dtype=torch.int64)[None]
    return out


OC_LAYER_D2L = [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]


def openclip_to_ldm(sd, prefix, extra_layers=0, fake_text_projection=None):
    """HF CLIPTextModel[WithProjection] -> OpenCLIP text-tower layout under `prefix`
    (`cond_stage_model.model.` for SD2, `conditioner.embedders.1.model.` for SDXL).
    extra_layers / fake_text_projection fabricate what diffusers throws away for SD2
    (the last resblock and text_projection) so the file looks like a real SD2 checkpoint."""
    out, qkv = {}, {}
    n_layers = 0
    for k, v in sd.items():
        if k == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out["ln_final." + k.rsplit(".", 1)[1]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()  # Linear [proj, width] -> parameter [width, proj]
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", k):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = v
            n_layers = max(n_layers, int(m[1]) + 1)
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", k):
            rest = m[2]
            for d, l in OC_LAYER_D2L:
                if rest.startswith(d + "."):
                    rest = l + rest[len(d):]
                    break
            else:
                raise KeyError(k)
            out[f"transformer.resblocks.{m[1]}.{rest}"] = v
        else:
            raise KeyError(f"unmapped text-encoder key {k}")
    for (i, kind), d in qkv.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([d["q"], d["k"], d["v"]], 0)
    # fabricate dropped parts (SD2 keeps 24 resblocks + text_projection in the file)
    template = {k: v for k, v in out.items() if k.startswith("transformer.resblocks.0.")}
    for e in range(extra_layers):
        for k, v in template.items():
            out[k.replace("resblocks.0.", f"resblocks.{n_layers + e}.", 1)] = torch.randn_like(v)
    if fake_text_projection is not None:
        out["text_projection"] = fake_text_projection
    out["logit_scale"] = torch.tensor(4.6052)  # present in real files, ignored by every loader
    return {prefix + k: v for k, v in out.items()}



# ----------------------------------------------------------------------------------------------
# The three families
# ----------------------------------------------------------------------------------------------
CA, DB, CU, UB = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"
TE = dict(vocab_size=49408, max_position_embeddings=77, hidden_size=4, intermediate_size=8, num_hidden_layers=2,
          num_attention_heads=1, layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 32], layers_per_block=1,
           norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
           sample_size=SIZE)
UNET = dict(sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=[32, 32], layers_per_block=1,
            norm_num_groups=32)


def without_version(cfg):
    return {k: v for k, v in cfg.items() if k != "_diffusers_version"}


FAMILIES = {
    "sd15": dict(
        pipe=StableDiffusionPipeline, scheduler=PNDMScheduler.from_config(without_version(SD15)), published=SD15,
        unet=dict(UNET, down_block_types=[CA, DB], up_block_types=[UB, CU], cross_attention_dim=4, attention_head_dim=8),
        vae=dict(VAE, scaling_factor=0.18215),
        te=[("text_encoder", "tokenizer", "clip", CLIPTextModel, dict(TE, hidden_act="quick_gelu"), "<|endoftext|>")],
        guidance=7.5, solver="dpm++"),
    "sd2": dict(
        pipe=StableDiffusionPipeline, scheduler=DDIMScheduler.from_config(without_version(SD21)), published=SD21,
        unet=dict(UNET, down_block_types=[CA, CA], up_block_types=[CU, CU], cross_attention_dim=4, attention_head_dim=[1, 1],
                  use_linear_projection=True, upcast_attention=True),
        vae=dict(VAE, scaling_factor=0.18215),
        te=[("text_encoder", "tokenizer", "openclip_sd2", CLIPTextModel, dict(TE, hidden_act="gelu", projection_dim=4), "!")],
        guidance=7.5, solver="dpm++"),
    "sdxl": dict(
        pipe=StableDiffusionXLPipeline, scheduler=EulerDiscreteScheduler.from_config(without_version(SDXL)), published=SDXL,
        unet=dict(UNET, down_block_types=[DB, CA], up_block_types=[CU, UB], transformer_layers_per_block=[1, 2],
                  cross_attention_dim=4 + 8, attention_head_dim=[1, 1], use_linear_projection=True,
                  addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=4 + 6 * 256),
        vae=dict(VAE, scaling_factor=0.13025, force_upcast=True),
        te=[("text_encoder", "tokenizer", "clip_sdxl", CLIPTextModel, dict(TE, hidden_act="quick_gelu"), "<|endoftext|>"),
            ("text_encoder_2", "tokenizer_2", "openclip_sdxl", CLIPTextModelWithProjection,
             # wider than the first: diffusers tells SDXL's two encoders apart by width
             dict(TE, hidden_act="gelu", hidden_size=8, intermediate_size=16, projection_dim=4), "!")],
        guidance=5.0, solver="euler"),
}
TE_PREFIX = {"clip": "cond_stage_model.transformer.", "clip_sdxl": "conditioner.embedders.0.transformer.",
             "openclip_sd2": "cond_stage_model.model.", "openclip_sdxl": "conditioner.embedders.1.model."}


@torch.no_grad()
def to_half_exact(model):
    """Round every parameter to float16 (kept float32), so fp16 files hold the model exactly."""
    reinit(model)
    for p in model.parameters():
        p.copy_(p.half().float())
    return model.eval()


def exact(a, b, what):
    assert set(a) == set(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))[:5]}"
    bad = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k].float(), b[k].float())]
    assert not bad, f"{what}: {len(bad)} tensors differ, e.g. {bad[:3]}"


def single_file(pipe, fam):
    """The pipeline's weights in the original LDM / SGM layout, float16."""
    ck = {}
    ck.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    ck.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    g = torch.Generator().manual_seed(1)
    for sub, _, kind, _, kw, _ in fam["te"]:
        tsd = getattr(pipe, sub).state_dict()
        if kind.startswith("clip"):
            ck.update(clip_to_ldm(tsd, TE_PREFIX[kind], kw["max_position_embeddings"]))
        elif kind == "openclip_sd2":
            # a real SD-2 file keeps OpenCLIP's last layer and text_projection, which diffusers drops
            extra = openclip_to_ldm(tsd, TE_PREFIX[kind], extra_layers=1, fake_text_projection=torch.randn(4, 4, generator=g))
            ck.update(extra)
        else:
            ck.update(openclip_to_ldm(tsd, TE_PREFIX[kind]))
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in ck.items()}


@torch.no_grad()
def run(pipe, fam, **kw):
    scheduler = pipe.scheduler
    if fam["solver"] == "dpm++":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(scheduler.config)
    try:
        return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=fam["guidance"],
                    height=SIZE, width=SIZE, output_type="latent", **kw).images
    finally:
        pipe.scheduler = scheduler


def build(name, fam, tmp):
    torch.manual_seed(0)
    unet = to_half_exact(UNet2DConditionModel(**fam["unet"]))
    vae = to_half_exact(AutoencoderKL(**fam["vae"]))
    parts = dict(unet=unet, vae=vae, scheduler=fam["scheduler"])
    for sub, tok, _, cls, kw, pad in fam["te"]:
        parts[sub] = to_half_exact(cls(CLIPTextConfig(**kw)))
        parts[tok] = CLIPTokenizer(os.path.join(VOCAB, "vocab.json"), os.path.join(VOCAB, "merges.txt"), pad_token=pad, model_max_length=77)
    if fam["pipe"] is StableDiffusionPipeline:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = fam["pipe"](**parts)
    folder = os.path.join(tmp, name)
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16", safe_serialization=True)
    # the scheduler config as the real repository ships it: save_pretrained would spell out every
    # default of the shipped class (PNDM's timestep_spacing="leading", say), which from_config then
    # carries over to the solver; a real folder leaves them out and the solver keeps its own
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(fam["published"], f, indent=2)
        f.write("\n")
    # the reference runs on what was written, read back as diffusers reads a folder
    pipe = fam["pipe"].from_pretrained(folder, variant="fp16", torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, folder


def generate(name, fam, tmp):
    pipe, folder = build(name, fam, tmp)
    sdxl = fam["pipe"] is StableDiffusionXLPipeline
    exp = {}
    with torch.no_grad():
        if sdxl:
            pe, ne, pp, npp = pipe.encode_prompt(PROMPT, negative_prompt=NEGATIVE)
            exp.update(pooled_prompt_embeds=pp, negative_pooled_prompt_embeds=npp)
            exp["clip_skip_prompt_embeds"] = pipe.encode_prompt(PROMPT, negative_prompt=NEGATIVE, clip_skip=1)[0]
            # force_zeros_for_empty_prompt: no negative prompt means zero negative embeddings
            _, zne, _, znp = pipe.encode_prompt(PROMPT)
            assert not zne.any() and not znp.any()
        else:
            pe, ne = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=NEGATIVE)
            exp["clip_skip_prompt_embeds"] = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=NEGATIVE, clip_skip=1)[0]
        exp.update(prompt_embeds=pe, negative_prompt_embeds=ne)
        latents = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(7))
        exp["latents"] = latents
        exp["final_from_latents"] = run(pipe, fam, latents=latents.clone())
        exp["final_from_seed"] = run(pipe, fam, generator=torch.Generator("cpu").manual_seed(SEED))
        img = pipe.vae.decode(exp["final_from_latents"] / pipe.vae.config.scaling_factor).sample
        exp["image_from_latents"] = (img / 2 + 0.5).clamp(0, 1)

    # single file: written from the folder's weights, read back by diffusers' own loader
    ck = single_file(pipe, fam)
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file(ck, path)
    none = {tok: None for _, tok, *_ in fam["te"]}
    if not sdxl:
        none.update(safety_checker=None, feature_extractor=None)
    sf = fam["pipe"].from_single_file(path, config=folder, torch_dtype=torch.float32, local_files_only=True, **none)
    for comp in ["unet", "vae"] + [sub for sub, *_ in fam["te"]]:
        exact(getattr(pipe, comp).state_dict(), getattr(sf, comp).state_dict(), f"{name} {comp}")
    for sub, tok, *_ in fam["te"]:
        setattr(sf, tok, getattr(pipe, tok))
    sf.scheduler = pipe.scheduler
    sf.set_progress_bar_config(disable=True)
    with torch.no_grad():
        again = run(sf, fam, latents=latents.clone())
    assert torch.equal(again, exp["final_from_latents"]), f"{name}: single file gives other latents"

    save_file({k: v.detach().float().contiguous() for k, v in exp.items()}, os.path.join(OUT, f"{name}_expected.safetensors"))
    dest = os.path.join(OUT, name)
    shutil.copytree(folder, dest)
    for _, tok, *_ in fam["te"]:
        for f in ("vocab.json", "merges.txt"):
            os.remove(os.path.join(dest, tok, f))
    for k, v in exp.items():
        print(f"[{name}] {k:28s} {tuple(v.shape)} std={v.float().std().item():.4f}")
    return dict(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=STEPS, height=SIZE, width=SIZE,
                guidance_scale=fam["guidance"], solver=fam["solver"], scheduler_shipped=type(fam["scheduler"]).__name__)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fam in FAMILIES.items():
            cases[name] = generate(name, fam, tmp)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=2)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
