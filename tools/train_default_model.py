"""Train sada's embedded default text-to-image model on the procedural shapes set.

Same code path as Stable Diffusion, at toy size: a CLIP-architecture text encoder with a
word-level tokenizer, diffusers' UNet2DConditionModel with cross-attention at full
resolution, v-prediction (as Stable Diffusion 2) under the DDPM linear beta schedule, 10%
caption dropout for classifier-free guidance, pixel space (3 x 32 x 32, no VAE: at 32 px a VAE
would cost more than it saves). v rather than epsilon: with the linear schedule the noisiest
step keeps alphas_cumprod = 4e-5, so an epsilon model's x0 estimate there carries its error
times 1/sqrt(4e-5) = 158, and DPM-Solver++ (which steps on x0) diverged to saturated colours
in a first run; v-prediction's x0 = sqrt(a) x - sqrt(1 - a) v stays bounded. Both networks are trained jointly from scratch; the shipped weights are the
EMA copy.

    cargo run -p sada --example export_shapes -- out/shapes 32
    tools/.venv/bin/python tools/train_default_model.py --data out/shapes --out crates/sada/assets/default_model

Constant learning rate after warm-up, so a run stopped after N steps equals a run with
--steps N (checkpoints are written every --save-every steps to OUT). Reproducible for a
given thread count (torch's CPU reductions depend on it).
"""

import argparse
import csv
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>"
MAX_LENGTH = 16


def build_tokenizer(captions):
    words = sorted({w for c in captions for w in c.lower().split()})
    vocab = {t: i for i, t in enumerate([BOS, EOS, PAD, UNK] + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    tok.enable_padding(pad_id=vocab[PAD], pad_token=PAD, length=MAX_LENGTH)
    tok.enable_truncation(max_length=MAX_LENGTH)
    return tok, vocab


def unet_config():
    return dict(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=1, norm_num_groups=8)


def text_config(vocab):
    return CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, hidden_act="quick_gelu",
        projection_dim=64, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD])


def scheduler_kwargs():
    return dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                prediction_type="v_prediction")


def save_pipeline(out, unet, text, tok):
    os.makedirs(out, exist_ok=True)
    unet.save_pretrained(os.path.join(out, "unet"))
    text.save_pretrained(os.path.join(out, "text_encoder"))
    os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=MAX_LENGTH).save_pretrained(os.path.join(out, "tokenizer"))
    DPMSolverMultistepScheduler(**scheduler_kwargs()).save_pretrained(os.path.join(out, "scheduler"))
    index = {
        "_class_name": "SadaPixelTextToImagePipeline",
        "_diffusers_version": "0.34.0",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
        "vae": [None, None],
    }
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--time-only", type=int, default=0, help="time N steps and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    images = load_file(os.path.join(args.data, "train.safetensors"))["images"]
    x0_all = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    captions = open(os.path.join(args.data, "train.txt")).read().splitlines()
    assert len(captions) == x0_all.shape[0]
    tok, vocab = build_tokenizer(captions)
    ids_all = torch.tensor([e.ids for e in tok.encode_batch(captions)])
    empty_ids = torch.tensor(tok.encode("").ids)

    unet = UNet2DConditionModel(**unet_config())
    text = CLIPTextModel(text_config(vocab))
    params = list(unet.parameters()) + list(text.parameters())
    print(f"unet {sum(p.numel() for p in unet.parameters())/1e6:.2f}M params, "
          f"text {sum(p.numel() for p in text.parameters())/1e6:.2f}M, {len(captions)} captions")
    ema_unet = UNet2DConditionModel(**unet_config())
    ema_text = CLIPTextModel(text_config(vocab))
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text.state_dict())
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = DDPMScheduler(**scheduler_kwargs())
    alphas_cumprod = sched.alphas_cumprod

    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    log_path = os.path.join(args.out, "train_log.csv")
    start = 0
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        unet.load_state_dict(ck["unet"]); text.load_state_dict(ck["text"])
        ema_unet.load_state_dict(ck["ema_unet"]); ema_text.load_state_dict(ck["ema_text"])
        opt.load_state_dict(ck["opt"]); torch.set_rng_state(ck["torch_rng"])
        rng.bit_generator.state = ck["np_rng"]; start = ck["step"]
        print(f"resumed at step {start}")
    else:
        with open(log_path, "w") as f:
            f.write("step,loss,lr,seconds\n")

    t0 = time.time()
    window = []
    for step in range(start, args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.from_numpy(rng.integers(0, x0_all.shape[0], args.batch))
        x0, ids = x0_all[idx], ids_all[idx].clone()
        drop = torch.from_numpy(rng.random(args.batch) < args.caption_dropout)
        ids[drop] = empty_ids
        t = torch.randint(0, 1000, (args.batch,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond = text(ids).last_hidden_state
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # EMA with diffusers' EMAModel warm-up, min(decay, (1 + t) / (10 + t)), so the shipped
        # average holds no trace of the random initialisation.
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema_params, params):
                pe.lerp_(p, 1 - decay)
        window.append(loss.item())
        if args.time_only and step + 1 - start == args.time_only:
            print(f"{(time.time() - t0) / args.time_only:.3f} s/step")
            return
        if (step + 1) % 50 == 0:
            el = time.time() - t0
            with open(log_path, "a") as f:
                f.write(f"{step + 1},{np.mean(window):.5f},{lr:.6f},{el:.1f}\n")
            print(f"step {step + 1} loss {np.mean(window):.4f} {el:.0f}s", flush=True)
            window = []
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            torch.save(dict(unet=unet.state_dict(), text=text.state_dict(), ema_unet=ema_unet.state_dict(),
                            ema_text=ema_text.state_dict(), opt=opt.state_dict(), step=step + 1,
                            torch_rng=torch.get_rng_state(), np_rng=rng.bit_generator.state), ckpt_path + ".tmp")
            os.replace(ckpt_path + ".tmp", ckpt_path)
            save_pipeline(os.path.join(args.out, "pipeline"), ema_unet, ema_text, tok)


if __name__ == "__main__":
    main()
