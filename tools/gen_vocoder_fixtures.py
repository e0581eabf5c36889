"""A tiny random HiFi-GAN vocoder as transformers' `SpeechT5HifiGan` (MusicLDM's and AudioLDM's
`vocoder/`), saved as a model folder, with a batch of log-mel spectrograms and the waveforms
transformers computes from them.

    tools/.venv/bin/python tools/gen_vocoder_fixtures.py

Writes tests/fixtures/vocoder/: tiny/ (config.json + model.safetensors) and expected.safetensors
(`spectrogram` [2, 20, 16], `waveform` [2, 160]). Weights are drawn wider than transformers'
initialisation (std 0.01 makes a waveform of near zeros) and the normalisation buffers are
random, so every part of the network shows in the output.
"""

import os

import torch
from safetensors.torch import save_file
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "vocoder")


def main():
    torch.manual_seed(0)
    config = SpeechT5HifiGanConfig(model_in_dim=16, sampling_rate=16000, upsample_initial_channel=32, upsample_rates=[4, 2],
                                   upsample_kernel_sizes=[8, 4], resblock_kernel_sizes=[3, 5],
                                   resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], normalize_before=True)
    model = SpeechT5HifiGan(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.08 if name.endswith("weight") else 0.05))
        model.mean.copy_(torch.randn(16) * 0.5)
        model.scale.copy_(torch.rand(16) + 0.5)
        spectrogram = torch.randn(2, 20, 16)
        waveform = model(spectrogram)
    model.save_pretrained(os.path.join(OUT, "tiny"), safe_serialization=True)
    save_file({"spectrogram": spectrogram.contiguous(), "waveform": waveform.contiguous()}, os.path.join(OUT, "expected.safetensors"))
    print("waveform", tuple(waveform.shape), "range", float(waveform.min()), float(waveform.max()), "saturated", float((waveform.abs() > 0.99).float().mean()), "std", float(waveform.std()))


if __name__ == "__main__":
    main()
