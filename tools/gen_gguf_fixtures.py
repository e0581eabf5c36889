"""GGUF fixtures: one file with a tensor of every block type sada reads, written with the `gguf`
package (llama.cpp's gguf-py, pinned in requirements.txt), and the package's own dequantisation
of each tensor as the expected f32 values.

Quantised blocks are random bytes (every bit pattern a real file could hold, not only what a
quantiser happens to produce) with their f16 scale fields set to finite values; F16 / BF16 /
Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 also carry a tensor quantised from random floats by the package.

    tools/.venv/bin/python tools/gen_gguf_fixtures.py   # writes tests/fixtures/gguf/
"""

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"
QK_K = 256

# byte offsets of each block type's f16 fields (d, and dmin / m where it has one)
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [QK_K // 16 + QK_K // 4, QK_K // 16 + QK_K // 4 + 2],
    T.Q3_K: [QK_K // 8 + QK_K // 4 + 12],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2],
    T.Q6_K: [QK_K // 2 + QK_K // 4 + QK_K // 16],
}


def random_blocks(rng, qtype, rows, cols):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        scale = rng.uniform(-0.05, 0.05, size=n_blocks).astype(np.float16)
        raw[:, at:at + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // block * size)


def main():
    rng = np.random.default_rng(0)
    OUT.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(OUT / "types.gguf"), "flux")
    writer.add_string("general.name", "sada block-type fixture")
    writer.add_array("sada.test.shape", [3, 64])
    expected = {}

    def add(name, data, qtype, shape):
        writer.add_tensor(name, data, raw_shape=data.shape if qtype in (T.F32,) else None, raw_dtype=qtype)
        expected[name] = gguf.quants.dequantize(data, qtype).reshape(shape).astype(np.float32)

    for qtype in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        cols = 2 * max(block, 32)
        add(f"random.{qtype.name}", random_blocks(rng, qtype, 3, cols), qtype, (3, cols))
    values = rng.standard_normal((4, 64)).astype(np.float32)
    # the values themselves, for checking our quantisers against the package's
    add("values.F32", values, T.F32, values.shape)
    for qtype in [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]:
        add(f"quantized.{qtype.name}", gguf.quants.quantize(values, qtype), qtype, values.shape)
    conv = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    add("conv.F32", conv, T.F32, conv.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(expected, str(OUT / "types_expected.safetensors"))
    print("wrote", OUT, len(expected), "tensors")
    flux_files()


def flux_files():
    """The tiny FLUX.1-dev transformer of tests/fixtures/flux (Black Forest Labs' layout, f16) as
    city96's GGUF files lay it out: all F16 (lossless), and quantised where a row is whole
    blocks (Q8_0; Q4_0 with Q5_1 for the double blocks' attention), the rest F16."""
    from safetensors.numpy import load_file

    tensors = load_file(str(OUT.parent / "flux" / "flux_dev_single.safetensors"))
    for label, pick in [
        ("f16", lambda name, a: T.F16),
        ("q8_0", lambda name, a: T.Q8_0 if a.ndim == 2 and a.shape[-1] % 32 == 0 else T.F16),
        ("q4_0", lambda name, a: (T.Q5_1 if "attn" in name else T.Q4_0) if a.ndim == 2 and a.shape[-1] % 32 == 0 else T.F16),
    ]:
        writer = gguf.GGUFWriter(str(OUT / f"flux_dev_{label}.gguf"), "flux")
        writer.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)
        for name, a in tensors.items():
            qtype = pick(name, a)
            if qtype == T.F16:
                writer.add_tensor(name, a.astype(np.float16))
            else:
                writer.add_tensor(name, gguf.quants.quantize(a.astype(np.float32), qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        print("wrote", f"flux_dev_{label}.gguf")


if __name__ == "__main__":
    main()
