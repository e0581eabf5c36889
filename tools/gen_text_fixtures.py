"""Fixtures for the text side and the image metrics (CI never runs Python):

- tests/fixtures/text/: a word-level tokenizer + random-weight CLIP text encoder built exactly
  as tools/train_default_model.py builds the shipped ones (not the shipped weights: a test of
  the code must not depend on the trained model), and expected.safetensors with the token ids
  transformers' tokenizer produces (padding="max_length", truncation=True, as diffusers calls
  it) and the encoder's last hidden state.
- tests/fixtures/metrics/ssim.safetensors: image pairs and scikit-image's SSIM / PSNR.

    tools/.venv/bin/python tools/gen_text_fixtures.py
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from transformers import CLIPTextModel, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(__file__))
from train_default_model import MAX_LENGTH, build_tokenizer, text_config  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")

PROMPTS = [
    "a small red star at the top left on a blue background",
    "A LARGE  Green ring in the center on an orange background",
    "",
    "a purple dog at the top right",                       # unknown word
    "a circle, on a white background",                     # punctuation stays attached
    " ".join(["red"] * 30),                                # truncated to MAX_LENGTH
]


def text_fixtures():
    out = os.path.join(ROOT, "text")
    torch.manual_seed(0)
    captions = ["a small red star at the top left on a blue background",
                "a large green ring in the center on an orange background",
                "a circle at the bottom right on a white background", "purple"]
    tok, vocab = build_tokenizer(captions)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>", unk_token="<|unk|>", model_max_length=MAX_LENGTH)
    fast.save_pretrained(os.path.join(out, "tokenizer"))
    fast = PreTrainedTokenizerFast.from_pretrained(os.path.join(out, "tokenizer"))
    model = CLIPTextModel(text_config(vocab)).eval()
    model.save_pretrained(os.path.join(out, "text_encoder"))
    ids = fast(PROMPTS, padding="max_length", max_length=fast.model_max_length, truncation=True,
               return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = model(ids).last_hidden_state
    save_file({"input_ids": ids.to(torch.int64).contiguous(), "last_hidden_state": hidden.contiguous()},
              os.path.join(out, "expected.safetensors"))
    with open(os.path.join(out, "prompts.json"), "w") as f:
        json.dump(PROMPTS, f, indent=1)


def metric_fixtures():
    out = os.path.join(ROOT, "metrics")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    a, b, ssim, psnr = [], [], [], []
    sizes = [(32, 32), (32, 32), (24, 40), (64, 64)]
    for k, (h, w) in enumerate(sizes):
        x = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if k == 1:  # smooth image + small noise: the regime SADA results are in
            yy, xx = np.mgrid[0:h, 0:w]
            x = np.stack([(128 + 100 * np.sin(xx / 5 + c) * np.cos(yy / 7)) for c in range(3)], -1).astype(np.uint8)
        y = np.clip(x.astype(np.int32) + rng.integers(-20, 21, x.shape), 0, 255).astype(np.uint8)
        a.append(torch.from_numpy(x.reshape(-1))); b.append(torch.from_numpy(y.reshape(-1)))
        ssim.append(structural_similarity(x, y, data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False))
        psnr.append(peak_signal_noise_ratio(x, y, data_range=255))
    save_file({"a": torch.cat(a), "b": torch.cat(b), "sizes": torch.tensor(sizes, dtype=torch.int64),
               "ssim": torch.tensor(ssim, dtype=torch.float64), "psnr": torch.tensor(psnr, dtype=torch.float64)},
              os.path.join(out, "ssim.safetensors"))


if __name__ == "__main__":
    text_fixtures()
    metric_fixtures()
