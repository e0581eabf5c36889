"""LPIPS fixtures: the `lpips` package (0.1.4, version 0.1 metric) on AlexNet and VGG-16
backbones whose weights are not downloaded but set from a formula both this script and the
Rust test evaluate exactly (integer hashing), so the fixture holds only images and distances.

    tools/.venv/bin/python tools/gen_lpips_fixtures.py

Writes tests/fixtures/metrics/lpips.safetensors:
  alex_a, alex_b   [2,3,64,64] images in [-1,1];  alex_d [2]  LPIPS(alex_a, alex_b)
  vgg_a,  vgg_b    [2,3,32,32];                   vgg_d  [2]

Weights: the tensors in order (for each backbone convolution in forward order: weight, bias;
then lin0..lin4), tensor number t, element i:
  u = ((i * 2654435761 + (t + 1) * 97531 + 12345) mod 2**32) / 2**32
  conv weight = (2u - 1) * sqrt(6 / fan_in), bias = (2u - 1) * 0.05, linear layer = 0.1 u
computed in float64 and stored as float32.
"""

import math
import os

import lpips
import numpy as np
import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "metrics", "lpips.safetensors")


def formula(t, shape, kind):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64((t + 1) * 97531 + 12345)) & np.uint64(0xFFFFFFFF)
    u = h.astype(np.float64) / 2.0**32
    if kind == "weight":
        fan_in = int(np.prod(shape[1:]))
        v = (2.0 * u - 1.0) * math.sqrt(6.0 / fan_in)
    elif kind == "bias":
        v = (2.0 * u - 1.0) * 0.05
    else:
        v = 0.1 * u
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


@torch.no_grad()
def build(net):
    # pnet_rand: no backbone download; the linear layers are overwritten below too
    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    t = 0
    for k in range(1, 6):
        for layer in getattr(model.net, f"slice{k}"):
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.copy_(formula(t, tuple(layer.weight.shape), "weight"))
                layer.bias.copy_(formula(t + 1, tuple(layer.bias.shape), "bias"))
                t += 2
    for k in range(5):
        w = getattr(model, f"lin{k}").model[1].weight
        w.copy_(formula(t, tuple(w.shape), "lin"))
        t += 1
    return model


def main():
    torch.manual_seed(0)
    out = {}
    for net, size in (("alex", 64), ("vgg", 32)):
        model = build(net)
        a = torch.rand(2, 3, size, size) * 2 - 1
        b = (a + 0.3 * torch.randn(2, 3, size, size)).clamp(-1, 1)
        d = model(a, b).flatten()
        out[f"{net}_a"], out[f"{net}_b"], out[f"{net}_d"] = a, b, d
        print(net, d.tolist())
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)


if __name__ == "__main__":
    main()
