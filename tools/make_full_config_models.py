"""Random-weight Stable Diffusion 2.1 and SDXL base pipelines at their full published sizes, for
timing and memory benchmarks of the real architectures where the real weights cannot be
downloaded (nothing here reaches the Hugging Face Hub). The configurations are those of
stabilityai/stable-diffusion-2-1 and stabilityai/stable-diffusion-xl-base-1.0 (values that
differ from diffusers' constructor defaults spelled out); tokenizers use the real CLIP
vocabulary the crate embeds. Weights are diffusers' / transformers' default initialisation,
written as float16 `.fp16` variants (as the real repositories also ship them).

    tools/.venv/bin/python tools/make_full_config_models.py OUT_DIR [sd21|sdxl ...]

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


def main():
    out = sys.argv[1]
    for name in sys.argv[2:] or ["sd21", "sdxl"]:
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
