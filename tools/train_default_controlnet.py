"""Train the embedded default model's ControlNet: the shape's outline (`Scene::outline`) steers
where and what the shape is, so `sada generate --prompt ... --control-image outline.png` works
offline.

    cargo run --release -p sada --example export_shapes -- out/shapes 32
    tools/.venv/bin/python tools/train_default_controlnet.py --data out/shapes --out out/controlnet
    cp out/controlnet/controlnet/* crates/sada/assets/default_model/controlnet/

As the ControlNet paper trains one: `ControlNetModel.from_unet` copies the frozen default model's
encoder half (the zero convolutions start at zero, so training starts from the unchanged model),
a one-level conditioning embedding (pixel space: the control image is the latent grid's size), 50%
of captions replaced by the empty prompt so the control image alone must carry the geometry, the
same v-prediction loss, timesteps and schedule as the base model. Only the ControlNet trains; the
text encoder and UNet are the shipped weights. The EMA copy is shipped. Reproducible for a given
thread count.
"""

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPTextModel, PreTrainedTokenizerFast
from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "crates", "sada", "assets", "default_model")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--caption-dropout", type=float, default=0.5)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-only", type=int, default=0, help="time N steps and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    data = load_file(os.path.join(args.data, "train.safetensors"))
    x0_all = data["images"].permute(0, 3, 1, 2).float() / 127.5 - 1.0
    # control images in [0, 1], as diffusers' control image processor gives them
    ctrl_all = data["outlines"].permute(0, 3, 1, 2).float() / 255.0
    captions = open(os.path.join(args.data, "train.txt")).read().splitlines()
    tok = PreTrainedTokenizerFast.from_pretrained(BASE, subfolder="tokenizer")
    text = CLIPTextModel.from_pretrained(BASE, subfolder="text_encoder").eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(BASE, subfolder="unet").eval().requires_grad_(False)
    with torch.no_grad():
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        cond_all = text(ids).last_hidden_state
        empty = text(tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids).last_hidden_state[0]

    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16,))
    ema = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16,))
    ema.load_state_dict(cn.state_dict())
    params = list(cn.parameters())
    print(f"controlnet {sum(p.numel() for p in params) / 1e6:.2f}M params, {len(captions)} scenes")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    alphas_cumprod = DDPMScheduler.from_pretrained(BASE, subfolder="scheduler").alphas_cumprod
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "train_log.csv")
    with open(log_path, "w") as f:
        f.write("step,loss,lr,seconds\n")
    t0, window = time.time(), []
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.from_numpy(rng.integers(0, x0_all.shape[0], args.batch))
        x0, ctrl, cond = x0_all[idx], ctrl_all[idx], cond_all[idx].clone()
        drop = torch.from_numpy(rng.random(args.batch) < args.caption_dropout)
        cond[drop] = empty
        t = torch.randint(0, 1000, (args.batch,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        down, mid = cn(xt, t, encoder_hidden_states=cond, controlnet_cond=ctrl, return_dict=False)
        pred = unet(xt, t, encoder_hidden_states=cond, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = F.mse_loss(pred, a.sqrt() * noise - (1 - a).sqrt() * x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), params):
                pe.lerp_(p, 1 - decay)
        window.append(loss.item())
        if args.time_only and step + 1 == args.time_only:
            print(f"{(time.time() - t0) / args.time_only:.3f} s/step")
            return
        if (step + 1) % 50 == 0:
            el = time.time() - t0
            with open(log_path, "a") as f:
                f.write(f"{step + 1},{np.mean(window):.5f},{lr:.6f},{el:.1f}\n")
            print(f"step {step + 1} loss {np.mean(window):.4f} {el:.0f}s", flush=True)
            window = []
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            ema.save_pretrained(os.path.join(args.out, "controlnet"))
            ema.save_pretrained(os.path.join(args.out, f"controlnet-{step + 1}"))


if __name__ == "__main__":
    main()
