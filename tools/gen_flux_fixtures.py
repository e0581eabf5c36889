"""Reference fixtures for Flux (diffusers' FluxTransformer2DModel, its autoencoder and FluxPipeline).

    tools/.venv/bin/python tools/gen_flux_fixtures.py

Builds tiny random-weight Flux models (2 double-stream + 2 single-stream blocks, 2 heads of 32 channels,
rotary axes (4, 14, 14) -- FLUX.1's proportions, which the single-file loader infers --, joint_attention_dim 32, pooled_projection_dim 8), every weight rounded to
float16 so the fp16 files hold them exactly, and writes to tests/fixtures/flux/:

  dev/, schnell/        pipeline folders as diffusers lays them out: transformer/ (dev: the fp16 variant,
                        schnell: float32), scheduler/ (the FLUX.1-dev / -schnell scheduler configs), vae/
                        (a two-level AutoencoderKL with 16 latent channels, shift_factor, no quant convs),
                        model_index.json without text encoders (conditioning comes as embeddings)
  flux_dev_single.safetensors   the dev transformer in the original single-file layout (Black Forest
                        Labs' key names: double_blocks.*, single_blocks.*, fused qkv), fp16; diffusers'
                        converter (its hard-coded width set to the file's) is asserted to read it back
                        bit for bit
  dev/ also has text_encoder/ + tokenizer/ (a tiny CLIP-L-shaped CLIPTextModel; the tokenizer's vocab.json and
                        merges.txt left out: the crate ships them) and text_encoder_2/ + tokenizer_2/ (a tiny
                        T5 v1.1-shaped T5EncoderModel and a SentencePiece Unigram tokenizer.json trained here)
  prompts.json          the two prompts of the prompt cases (the second long enough to be truncated by both)
  expected.safetensors
      prompts: `t5_input_ids` [2,512] and `clip_input_ids` [2,77] (as float), `prompt_t5_embeds` [2,512,32] and
      `prompt_pooled` [2,8] from FluxPipeline.encode_prompt, `dev_prompt_final` after 50 steps from seed 7;
      forward: `latents` [2,16,8,12] (unpacked), `prompt_embeds` [2,7,32], `pooled_prompt_embeds` [2,8],
      timestep 0.7 (the pipeline's t / 1000), guidance 3.5 -> `dev_forward`, `schnell_forward` (unpacked,
      as the pipeline's _unpack_latents gives them);
      pipelines: 32x48 images (latents 16x24, 96 packed tokens) from seed 7 (noise drawn by diffusers
      from torch.Generator().manual_seed(7) in the unpacked shape, then packed): `dev_noise`,
      `dev_final` (50 steps, guidance 3.5, dynamic shift), `dev_image` (decoded, [-1, 1]),
      `schnell_final` (4 steps, shift 1), `schnell_image`; the embeddings used are `pipe_prompt_embeds`
      [2,7,32] and `pipe_pooled_prompt_embeds` [2,8].
"""

import inspect
import json
import os
import shutil
import warnings

import torch
from safetensors.torch import load_file, save_file
from diffusers.loaders import single_file_utils
from tokenizers import SentencePieceUnigramTokenizer
from tokenizers.processors import TemplateProcessing
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

warnings.filterwarnings("ignore")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "flux")

TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=32,
                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=8, axes_dims_rope=(4, 14, 14))
VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[16, 32], layers_per_block=1,
           latent_channels=16, norm_num_groups=8, scaling_factor=0.3611, shift_factor=0.1159,
           use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)
# FLUX.1-dev's and FLUX.1-schnell's scheduler_config.json
SCHEDULERS = {
    "dev": dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, num_train_timesteps=1000,
                shift=3.0, use_dynamic_shifting=True),
    "schnell": dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False),
}
HEIGHT, WIDTH = 32, 48
VOCAB = os.path.join(ROOT, "crates", "sada", "assets", "clip")
# FLUX.1's text encoders in miniature: CLIP-L's shape (quick_gelu, 77 positions, the full vocabulary) and
# T5 v1.1's (gated GELU, relative position buckets), with a SentencePiece Unigram vocabulary trained here
CLIP = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, vocab_size=49408,
            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2,
            pad_token_id=1)
T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
          relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
          is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
CORPUS = [
    "a photograph of an astronaut riding a horse on the moon",
    "a red circle on a blue background, digital art",
    "a cat holding a sign that says hello world",
    "an oil painting of a lighthouse at night, stormy sea, dramatic lighting",
    "close-up portrait of an old fisherman, 85mm, shallow depth of field",
    "a bowl of ramen with chopsticks, studio photo, high detail",
    "isometric pixel art of a tiny village with windmills and rivers",
    "Ünïcödé wörds and numbers 1234 5678 should still tokenize!",
]
PROMPTS = ["a cat holding a sign that says hello world",
           # longer than CLIP's 77 tokens and, with the tiny vocabulary, than T5's window: both truncate
           " ".join(CORPUS * 12)]


def half_exact(model, seed):
    """Redraw every parameter (fan-in scaled, so activations stay O(1)) and round it to float16."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
        elif name.endswith("weight") and ("norm" in name):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        p.copy_(p.half().float())
    return model.eval()


def to_bfl(sd):
    """diffusers FluxTransformer2DModel -> the original single-file layout (what diffusers'
    convert_flux_transformer_checkpoint_to_diffusers undoes)."""
    out = {}

    def put(dst, *srcs):
        for suffix in ("weight", "bias"):
            parts = [sd[f"{s}.{suffix}"] for s in srcs if f"{s}.{suffix}" in sd]
            if parts:
                out[f"{dst}.{suffix}"] = torch.cat(parts, 0)

    put("img_in", "x_embedder")
    put("txt_in", "context_embedder")
    put("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    put("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    put("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    put("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if "time_text_embed.guidance_embedder.linear_1.weight" in sd:
        put("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        put("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    n_double = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    n_single = len({k.split(".")[1] for k in sd if k.startswith("single_transformer_blocks.")})
    for i in range(n_double):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        put(f"{b}.img_mod.lin", f"{d}.norm1.linear")
        put(f"{b}.txt_mod.lin", f"{d}.norm1_context.linear")
        put(f"{b}.img_attn.qkv", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v")
        put(f"{b}.txt_attn.qkv", f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj")
        out[f"{b}.img_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.img_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
        out[f"{b}.txt_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_added_q.weight"]
        out[f"{b}.txt_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_added_k.weight"]
        put(f"{b}.img_mlp.0", f"{d}.ff.net.0.proj")
        put(f"{b}.img_mlp.2", f"{d}.ff.net.2")
        put(f"{b}.txt_mlp.0", f"{d}.ff_context.net.0.proj")
        put(f"{b}.txt_mlp.2", f"{d}.ff_context.net.2")
        put(f"{b}.img_attn.proj", f"{d}.attn.to_out.0")
        put(f"{b}.txt_attn.proj", f"{d}.attn.to_add_out")
    for i in range(n_single):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        put(f"{b}.modulation.lin", f"{d}.norm.linear")
        put(f"{b}.linear1", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp")
        out[f"{b}.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
        put(f"{b}.linear2", f"{d}.proj_out")
    put("final_layer.linear", "proj_out")
    # the original modulation emits (shift, scale); diffusers' AdaLayerNormContinuous (scale, shift)
    for suffix in ("weight", "bias"):
        scale, shift = sd[f"norm_out.linear.{suffix}"].chunk(2, 0)
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = torch.cat([shift, scale], 0)
    return {k: v.half().contiguous() for k, v in out.items()}


def from_bfl(sd):
    """diffusers' own converter, with its width (hard-coded to FLUX.1's 3072) set to the file's."""
    src = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    src = src.replace("inner_dim = 3072", f"inner_dim = {sd['img_in.weight'].shape[0]}")
    assert "inner_dim = 3072" not in src
    scope = dict(vars(single_file_utils))
    exec(src, scope)
    out = scope["convert_flux_transformer_checkpoint_to_diffusers"]({k: v.float() for k, v in sd.items()})
    return out


def t5_tokenizer(dest):
    """A SentencePiece Unigram tokenizer as T5's tokenizer.json lays one out (<pad> 0, </s> 1, <unk> 2, NFKC-free
    Metaspace pre-tokenizer, `$A </s>` post-processor), trained on a few captions; saved by T5TokenizerFast."""
    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(CORPUS * 4, vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                           show_progress=False)
    sp.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tok = T5TokenizerFast(tokenizer_object=sp, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
                          model_max_length=512)
    tok.save_pretrained(dest)
    return T5TokenizerFast.from_pretrained(dest)


def exact(a, b, what):
    assert set(a) == set(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))[:5]}"
    bad = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k].float(), b[k].float())]
    assert not bad, f"{what}: {len(bad)} tensors differ, e.g. {bad[:3]}"


def unpack(pipe, packed):
    return pipe._unpack_latents(packed, HEIGHT, WIDTH, pipe.vae_scale_factor)


@torch.no_grad()
def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    torch.manual_seed(0)
    vae = half_exact(AutoencoderKL(**VAE), 5)
    transformers = {}
    for variant, seed in (("dev", 1), ("schnell", 2)):
        folder = os.path.join(OUT, variant)
        t = half_exact(FluxTransformer2DModel(**TRANSFORMER, guidance_embeds=variant == "dev"), seed)
        if variant == "dev":
            t.to(torch.float16).save_pretrained(os.path.join(folder, "transformer"), variant="fp16")
            t = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", variant="fp16",
                                                       torch_dtype=torch.float32).eval()
        else:
            t.save_pretrained(os.path.join(folder, "transformer"))
        transformers[variant] = t
        FlowMatchEulerDiscreteScheduler(**SCHEDULERS[variant]).save_pretrained(os.path.join(folder, "scheduler"))
        vae.to(torch.float16).save_pretrained(os.path.join(folder, "vae"), variant="fp16")
        vae.to(torch.float32)
        with open(os.path.join(folder, "model_index.json"), "w") as f:
            json.dump({"_class_name": "FluxPipeline", "_diffusers_version": "0.34.0",
                       "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                       "text_encoder": [None, None], "text_encoder_2": [None, None], "tokenizer": [None, None],
                       "tokenizer_2": [None, None], "transformer": ["diffusers", "FluxTransformer2DModel"],
                       "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
    vae = AutoencoderKL.from_pretrained(os.path.join(OUT, "dev"), subfolder="vae", variant="fp16",
                                        torch_dtype=torch.float32).eval()

    # the text encoders, in the dev folder only (schnell stays an embeddings-only folder)
    dev = os.path.join(OUT, "dev")
    clip = half_exact(CLIPTextModel(CLIPTextConfig(**CLIP)), 8)
    clip.to(torch.float16).save_pretrained(os.path.join(dev, "text_encoder"), variant="fp16")
    clip = CLIPTextModel.from_pretrained(dev, subfolder="text_encoder", variant="fp16", torch_dtype=torch.float32).eval()
    clip_tok = CLIPTokenizer(os.path.join(VOCAB, "vocab.json"), os.path.join(VOCAB, "merges.txt"), pad_token="<|endoftext|>",
                             model_max_length=77)
    clip_tok.save_pretrained(os.path.join(dev, "tokenizer"))
    for f in ("vocab.json", "merges.txt"):  # the crate ships CLIP's vocabulary; tests copy it back in
        os.remove(os.path.join(dev, "tokenizer", f))
    t5_tok = t5_tokenizer(os.path.join(dev, "tokenizer_2"))
    t5 = half_exact(T5EncoderModel(T5Config(vocab_size=len(t5_tok), **T5)), 9)
    t5.to(torch.float16).save_pretrained(os.path.join(dev, "text_encoder_2"), variant="fp16")
    t5 = T5EncoderModel.from_pretrained(dev, subfolder="text_encoder_2", variant="fp16", torch_dtype=torch.float32).eval()
    with open(os.path.join(dev, "model_index.json")) as f:
        index = json.load(f)
    index.update(text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"],
                 text_encoder_2=["transformers", "T5EncoderModel"], tokenizer_2=["transformers", "T5TokenizerFast"])
    with open(os.path.join(dev, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)

    # the original single-file layout, read back by diffusers' own converter
    single = os.path.join(OUT, "flux_dev_single.safetensors")
    save_file(to_bfl(transformers["dev"].state_dict()), single)
    exact(transformers["dev"].state_dict(), from_bfl(load_file(single)), "single file")

    out = {}
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 16, 8, 12, generator=g)
    prompt_embeds = torch.randn(2, 7, 32, generator=g)
    pooled = torch.randn(2, 8, generator=g)
    out.update(latents=latents, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled)
    packed = FluxPipeline._pack_latents(latents, 2, 16, 8, 12)
    img_ids = FluxPipeline._prepare_latent_image_ids(2, 4, 6, "cpu", torch.float32)
    txt_ids = torch.zeros(7, 3)
    for variant, t in transformers.items():
        guidance = torch.full([2], 3.5) if variant == "dev" else None
        y = t(hidden_states=packed, encoder_hidden_states=prompt_embeds, pooled_projections=pooled,
              timestep=torch.full([2], 0.7), img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
        out[f"{variant}_forward"] = FluxPipeline._unpack_latents(y, 16, 24, 2)

    pe = torch.randn(2, 7, 32, generator=g)
    pp = torch.randn(2, 8, generator=g)
    out.update(pipe_prompt_embeds=pe, pipe_pooled_prompt_embeds=pp)
    for variant, steps, guidance in (("dev", 50, 3.5), ("schnell", 4, 0.0)):
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(os.path.join(OUT, variant), subfolder="scheduler")
        pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                            tokenizer_2=None, transformer=transformers[variant])
        assert pipe.vae_scale_factor == 2
        noise = torch.randn(2, 16, 16, 24, generator=torch.Generator().manual_seed(7))
        final = pipe(prompt_embeds=pe, pooled_prompt_embeds=pp, height=HEIGHT, width=WIDTH, num_inference_steps=steps,
                     guidance_scale=guidance, generator=torch.Generator().manual_seed(7), output_type="latent").images
        final = unpack(pipe, final)
        out[f"{variant}_noise"] = noise
        out[f"{variant}_final"] = final
        out[f"{variant}_image"] = vae.decode(final / vae.config.scaling_factor + vae.config.shift_factor).sample
    # from prompts: FluxPipeline.encode_prompt (T5 ids padded to max_sequence_length 512, CLIP's pooled output),
    # then the same 50 dev steps
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(dev, subfolder="scheduler")
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=transformers["dev"])
    out["t5_input_ids"] = t5_tok(PROMPTS, padding="max_length", max_length=512, truncation=True,
                                 return_tensors="pt").input_ids.float()
    out["clip_input_ids"] = clip_tok(PROMPTS, padding="max_length", max_length=77, truncation=True,
                                     return_tensors="pt").input_ids.float()
    pe, pooled, _ = pipe.encode_prompt(prompt=PROMPTS, prompt_2=None, max_sequence_length=512)
    out.update(prompt_t5_embeds=pe, prompt_pooled=pooled)
    final = pipe(prompt=PROMPTS, height=HEIGHT, width=WIDTH, num_inference_steps=50, guidance_scale=3.5,
                 generator=torch.Generator().manual_seed(7), output_type="latent").images
    out["dev_prompt_final"] = unpack(pipe, final)
    with open(os.path.join(OUT, "prompts.json"), "w") as f:
        json.dump(PROMPTS, f, indent=2)
    save_file({k: v.contiguous().float() for k, v in out.items()}, os.path.join(OUT, "expected.safetensors"))
    print({k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
