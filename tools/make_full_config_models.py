"""Random-weight Stable Diffusion 2.1, SDXL base and FLUX.1-dev pipelines at their full published sizes, for
timing and memory benchmarks of the real architectures where the real weights cannot be
downloaded (nothing here reaches the Hugging Face Hub). The configurations are those of
stabilityai/stable-diffusion-2-1 and stabilityai/stable-diffusion-xl-base-1.0 (values that
differ from diffusers' constructor defaults spelled out); tokenizers use the real CLIP
vocabulary the crate embeds. Weights are diffusers' / transformers' default initialisation,
written as float16 `.fp16` variants (as the real repositories also ship them).

    tools/.venv/bin/python tools/make_full_config_models.py OUT_DIR [sd21|sdxl|flux ...]

FLUX.1-dev (a 12 B transformer, T5-XXL, CLIP-L, its 16-channel VAE; 34 GB in f16) is written
tensor by tensor from the models' parameter names and shapes (built on the meta device: the
whole model never sits in memory), each weight drawn uniformly within +-1/sqrt(fan_in) as
PyTorch's Linear and Conv2d initialise, norms' scales 1, T5's relative position biases normal. Its T5
tokenizer is the tiny fixture's (tests/fixtures/flux/dev/tokenizer_2; only ids matter here).

Images from these weights are noise; only time and memory mean anything.
"""

import json
import os
import sys

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from published_configs import SD21, SDXL  # noqa: E402

VOCAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "crates", "sada", "assets", "clip")
CA, DB, CU, UB = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"
TEXT = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1, layer_norm_eps=1e-5)


def tokenizer(pad):
    return CLIPTokenizer(os.path.join(VOCAB, "vocab.json"), os.path.join(VOCAB, "merges.txt"), pad_token=pad, model_max_length=77)


def sd21():
    unet = UNet2DConditionModel(sample_size=96, block_out_channels=[320, 640, 1280, 1280], down_block_types=[CA, CA, CA, DB],
                                up_block_types=[UB, CU, CU, CU], cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                                use_linear_projection=True, upcast_attention=True)
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, sample_size=768)
    te = CLIPTextModel(CLIPTextConfig(**TEXT, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                      num_attention_heads=16, hidden_act="gelu", projection_dim=512))
    sched = DDIMScheduler.from_config({k: v for k, v in SD21.items() if k != "_diffusers_version"})
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer("!"), unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False), SD21


def sdxl():
    unet = UNet2DConditionModel(sample_size=128, block_out_channels=[320, 640, 1280], down_block_types=[DB, CA, CA],
                                up_block_types=[CU, CU, UB], transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048,
                                attention_head_dim=[5, 10, 20], use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, sample_size=1024,
                        scaling_factor=0.13025, force_upcast=True)
    te = CLIPTextModel(CLIPTextConfig(**TEXT, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                     num_attention_heads=20, hidden_act="gelu", projection_dim=1280))
    sched = EulerDiscreteScheduler.from_config({k: v for k, v in SDXL.items() if k != "_diffusers_version"})
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tokenizer("<|endoftext|>"),
                                     tokenizer_2=tokenizer("!"), unet=unet, scheduler=sched), SDXL


def streamed(model, dest, file_stem, shard_bytes=2 << 30):
    """Write `model`'s parameters (meta tensors) as random float16 safetensors shards + index, a
    2 GB shard at a time (safetensors serialises a shard in memory beside its tensors)."""
    from safetensors.torch import save_file

    os.makedirs(dest, exist_ok=True)
    model.save_config(dest) if hasattr(model, "save_config") else model.config.to_json_file(os.path.join(dest, "config.json"))
    g = torch.Generator().manual_seed(0)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    written, cur, size = [], {}, 0  # shards on disk: (temporary name, their tensors' names)

    def flush():
        tmp = os.path.join(dest, f".{file_stem}-{len(written):05d}.partial")
        save_file(cur, tmp, metadata={"format": "pt"})
        written.append((tmp, list(cur)))

    total = 0
    for name, shape in sorted(shapes.items()):
        n = 1
        for d in shape:
            n *= d
        if len(shape) == 1 and ("norm" in name or "ln" in name) and name.endswith(("weight", "scale")):
            t = torch.ones(shape)
        elif "relative_attention_bias" in name:
            t = torch.randn(shape, generator=g)
        else:
            fan_in = n // shape[0] if len(shape) > 1 else shape[0]
            bound = 1.0 / max(fan_in, 1) ** 0.5
            t = (torch.rand(shape, generator=g) * 2 - 1) * bound
        cur[name] = t.to(torch.float16)
        size += n * 2
        total += n
        if size >= shard_bytes:
            flush()
            cur, size = {}, 0
    if cur:
        flush()
    index = {}
    for i, (tmp, names) in enumerate(written):
        fname = f"{file_stem}-{i + 1:05d}-of-{len(written):05d}.safetensors"
        os.replace(tmp, os.path.join(dest, fname))
        index.update({k: fname for k in names})
    with open(os.path.join(dest, f"{file_stem}.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total * 2}, "weight_map": index}, f, indent=1)
    return total


def flux(dest):
    """FLUX.1-dev at full size, streamed to `dest` (black-forest-labs/FLUX.1-dev's configs)."""
    import shutil

    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from published_configs import FLUX

    with init_empty_weights():
        tr = FluxTransformer2DModel(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                    guidance_embeds=True, axes_dims_rope=[16, 56, 56])
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24,
                                     num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                                     dropout_rate=0.0, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
                                     is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False))
    n = streamed(tr, os.path.join(dest, "transformer"), "diffusion_pytorch_model")
    print(f"{dest}: transformer {n / 1e9:.2f} B parameters")
    n = streamed(t5, os.path.join(dest, "text_encoder_2"), "model")
    print(f"{dest}: T5 {n / 1e9:.2f} B parameters")
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(**TEXT, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768))
    te.to(torch.float16).save_pretrained(os.path.join(dest, "text_encoder"), safe_serialization=True)
    tokenizer("<|endoftext|>").save_pretrained(os.path.join(dest, "tokenizer"))
    fixture = os.path.join(os.path.dirname(VOCAB), "..", "..", "..", "tests", "fixtures", "flux", "dev", "tokenizer_2")
    shutil.copytree(os.path.normpath(fixture), os.path.join(dest, "tokenizer_2"), dirs_exist_ok=True)
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=16, sample_size=1024,
                        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    vae.to(torch.float16).save_pretrained(os.path.join(dest, "vae"), safe_serialization=True)
    os.makedirs(os.path.join(dest, "scheduler"), exist_ok=True)
    with open(os.path.join(dest, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(FLUX, f, indent=2)
    index = {"_class_name": "FluxPipeline", "_diffusers_version": "0.34.0", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
             "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}
    with open(os.path.join(dest, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


def main():
    out = sys.argv[1]
    for name in sys.argv[2:] or ["sd21", "sdxl"]:
        if name == "flux":
            flux(os.path.join(out, name))
            continue
        torch.manual_seed(0)
        pipe, published = {"sd21": sd21, "sdxl": sdxl}[name]()
        dest = os.path.join(out, name)
        pipe.to(torch.float16).save_pretrained(dest, variant="fp16", safe_serialization=True)
        with open(os.path.join(dest, "scheduler", "scheduler_config.json"), "w") as f:
            json.dump(published, f, indent=2)
        n = sum(p.numel() for p in pipe.unet.parameters())
        print(f"{dest}: UNet {n / 1e6:.0f} M parameters")
        del pipe


if __name__ == "__main__":
    main()
