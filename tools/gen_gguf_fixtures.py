"""GGUF fixtures: one file with a tensor of every block type sada reads, written with the `gguf`
package (llama.cpp's gguf-py, pinned in requirements.txt), and the package's own dequantisation
of each tensor as the expected f32 values.

Quantised blocks are random bytes (every bit pattern a real file could hold, not only what a
quantiser happens to produce) with their f16 scale fields set to finite values; F16 / BF16 /
Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 also carry a tensor quantised from random floats by the package.

The tiny FLUX.1-dev transformer of tests/fixtures/flux is also written as city96's GGUF files
lay it out (F16, Q8_0, Q4_0, Q4_K), and each quantised file is run through diffusers' own GGUF
loader (`from_single_file` with `GGUFQuantizationConfig`, compute in float32) on the flux
fixtures' forward inputs: `flux_gguf_expected.safetensors` holds `{f16,q8_0,q4_0,q4_k}_forward`
(diffusers' dequantisers asked for float32, as ggml computes) and `..._forward_f16_products`
(as diffusers 0.34 ships them: each scale x level product rounded to float16).

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


def q4_k_blocks(a):
    """A valid Q4_K encoding of `a` (rows of whole 256-value super-blocks; gguf-py has no Q4_K
    quantiser): per 32 values a scale over its range and a minimum, each as 6 bits of the
    super-block's f16 d / dmin. Not ggml's search; the fixture only needs real Q4_K blocks,
    which gguf-py's dequantiser is then checked to read back closely."""
    x = a.astype(np.float32).reshape(-1, 8, 32)
    mins = np.maximum(-x.min(axis=-1), 0)
    scales = (x.max(axis=-1) + mins) / 15
    d = (scales.max(axis=-1, keepdims=True) / 63).astype(np.float16)
    dmin = (mins.max(axis=-1, keepdims=True) / 63).astype(np.float16)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d > 0, np.round(scales / d.astype(np.float32)), 0).clip(0, 63).astype(np.uint8)
        m = np.where(dmin > 0, np.round(mins / dmin.astype(np.float32)), 0).clip(0, 63).astype(np.uint8)
        step = (d.astype(np.float32) * sc)[..., None]
        q = np.where(step > 0, np.round((x + (dmin.astype(np.float32) * m)[..., None]) / step), 0).clip(0, 15).astype(np.uint8)
    packed = np.zeros((x.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    q = q.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(-1, 128)
    blocks = np.concatenate([d.view(np.uint8), dmin.view(np.uint8), packed, qs], axis=-1)
    back = gguf.quants.dequantize(blocks, T.Q4_K).reshape(a.shape)
    assert np.abs(back - a).max() <= 0.1 * np.abs(a).max() + 1e-6, "Q4_K round trip"
    return blocks.reshape(a.shape[0], -1)


def flux_files():
    """The tiny FLUX.1-dev transformer of tests/fixtures/flux (Black Forest Labs' layout, f16) as
    city96's GGUF files lay it out: all F16 (lossless), and quantised where a row is whole
    blocks (Q8_0; Q4_0 with Q5_1 for the double blocks' attention; Q4_K where a row is whole
    super-blocks, Q8_0 where it is whole 32-blocks), the rest F16."""
    from safetensors.numpy import load_file

    tensors = load_file(str(OUT.parent / "flux" / "flux_dev_single.safetensors"))
    whole = lambda a, n: a.ndim == 2 and a.shape[-1] % n == 0  # noqa: E731
    for label, pick in [
        ("f16", lambda name, a: T.F16),
        ("q8_0", lambda name, a: T.Q8_0 if whole(a, 32) else T.F16),
        ("q4_0", lambda name, a: (T.Q5_1 if "attn" in name else T.Q4_0) if whole(a, 32) else T.F16),
        ("q4_k", lambda name, a: T.Q4_K if whole(a, 256) else T.Q8_0 if whole(a, 32) else T.F16),
    ]:
        writer = gguf.GGUFWriter(str(OUT / f"flux_dev_{label}.gguf"), "flux")
        writer.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)
        for name, a in tensors.items():
            qtype = pick(name, a)
            if qtype == T.F16:
                writer.add_tensor(name, a.astype(np.float16))
            elif qtype == T.Q4_K:
                writer.add_tensor(name, q4_k_blocks(a.astype(np.float32)), raw_dtype=qtype)
            else:
                writer.add_tensor(name, gguf.quants.quantize(a.astype(np.float32), qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        print("wrote", f"flux_dev_{label}.gguf")
    diffusers_reference()


def diffusers_reference():
    """Each quantised file through diffusers' GGUF loader, on the flux fixtures' forward inputs."""
    import functools
    import inspect

    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel, GGUFQuantizationConfig
    from diffusers.quantizers.gguf import utils as gguf_utils
    from diffusers.loaders import single_file_model, single_file_utils
    from safetensors.torch import load_file, save_file

    # diffusers' converter hard-codes FLUX.1's width (3072): set it to the fixture's (64)
    name = "convert_flux_transformer_checkpoint_to_diffusers"
    src = inspect.getsource(getattr(single_file_utils, name)).replace("inner_dim = 3072", "inner_dim = 64")
    scope = dict(vars(single_file_utils))
    exec(src, scope)
    single_file_model.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"]["checkpoint_mapping_fn"] = scope[name]

    flux = OUT.parent / "flux"
    want = load_file(str(flux / "expected.safetensors"))
    latents, prompt_embeds, pooled = want["latents"], want["prompt_embeds"], want["pooled_prompt_embeds"]
    packed = FluxPipeline._pack_latents(latents, 2, 16, 8, 12)
    img_ids = FluxPipeline._prepare_latent_image_ids(2, 4, 6, "cpu", torch.float32)
    # diffusers 0.34 dequantises in the blocks' own float16 (`d.view(torch.float16).to(None)`
    # keeps the scale half, so every scale x level product is rounded to half); ggml and
    # gguf-py form them in float32. The reference runs diffusers' loader both ways: as shipped,
    # and with its dequantisers given float32 (their own `dtype` argument).
    shipped = dict(gguf_utils.dequantize_functions)
    f32 = {k: functools.partial(fn, dtype=torch.float32) for k, fn in shipped.items()}
    out = {}
    for label in ["f16", "q8_0", "q4_0", "q4_k"]:
        for suffix, functions in [("", f32), ("_f16_products", shipped)]:
            gguf_utils.dequantize_functions.clear()
            gguf_utils.dequantize_functions.update(functions)
            model = FluxTransformer2DModel.from_single_file(
                str(OUT / f"flux_dev_{label}.gguf"), config=str(flux / "dev"), subfolder="transformer",
                quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), torch_dtype=torch.float32)
            kinds = {type(p).__name__ for p in model.parameters()}
            assert label == "f16" or "GGUFParameter" in kinds, f"{label}: not loaded quantised ({kinds})"
            with torch.no_grad():
                y = model(hidden_states=packed, encoder_hidden_states=prompt_embeds, pooled_projections=pooled,
                          timestep=torch.full([2], 0.7), img_ids=img_ids, txt_ids=torch.zeros(7, 3),
                          guidance=torch.full([2], 3.5), return_dict=False)[0]
            out[f"{label}_forward{suffix}"] = FluxPipeline._unpack_latents(y, 16, 24, 2).contiguous()
            err = (out[f"{label}_forward{suffix}"] - want["dev_forward"]).abs().max().item()
            print(f"{label}{suffix} forward: max |diff| against the f16 folder's", f"{err:.3e}")
    gguf_utils.dequantize_functions.update(shipped)
    save_file(out, str(OUT / "flux_gguf_expected.safetensors"))


if __name__ == "__main__":
    main()
