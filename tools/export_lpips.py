"""Export the LPIPS network (backbone + linear layers) to one safetensors file for
`sada bench --lpips-weights FILE`.

    tools/.venv/bin/python tools/export_lpips.py alex lpips-alex.safetensors   # or: vgg

The linear layers ship inside the `lpips` package; the backbone (torchvision's ImageNet AlexNet
or VGG-16) is downloaded by torchvision on first use, so run this where that download works (or
with the torchvision weights already in its cache). The file holds the `lpips.LPIPS` state
dict, whose names `sada` reads (`net.slice{k}.{i}.*`, `lin{k}.model.1.weight`,
`scaling_layer.*`).
"""

import sys

import lpips
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("alex", "vgg"):
        sys.exit("usage: export_lpips.py alex|vgg OUT.safetensors")
    model = lpips.LPIPS(net=sys.argv[1], pretrained=True, verbose=False).eval()
    # `lins.{k}` duplicates `lin{k}`: keep one name per tensor
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("lins.")}
    save_file(state, sys.argv[2])
    print(f"wrote {len(state)} tensors to {sys.argv[2]}")


if __name__ == "__main__":
    main()
