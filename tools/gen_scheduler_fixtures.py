"""Generate scheduler reference fixtures from diffusers for the Rust port.

Run from the repository root:

    python -m venv tools/.venv
    tools/.venv/bin/pip install -r tools/requirements.txt
    tools/.venv/bin/python tools/gen_scheduler_fixtures.py

Writes one JSON file per case to tests/fixtures/schedulers/<name>.json holding
diffusers' exact numbers (float32, CPU, fixed seed) for
DPMSolverMultistepScheduler, EulerDiscreteScheduler and
FlowMatchEulerDiscreteScheduler: the resolved config, timesteps, sigmas,
alphas_cumprod, and a full sampling loop driven by a deterministic synthetic
"model" (model_input -> model_output -> prev_sample for every step).

Each file has the keys: name, class, source_config, overrides, config,
num_inference_steps, set_timesteps_kwargs, image_seq_len, shape, timesteps,
sigmas, init_noise_sigma, alphas_cumprod, initial_sample, steps.
All tensors are flattened (row-major) lists of the exact float32 values.
"""

import copy
import json
import logging
import math
import os
import sys

import numpy as np
import torch
import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

SEED = 0
SHAPE = [1, 4, 4, 4]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "schedulers")

CLASSES = {
    "DDIMScheduler": DDIMScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
}

# Real scheduler_config.json contents of the corresponding model folders.
from published_configs import FLUX, SD3, SD15, SD21, SDXL  # noqa: E402
DDPM_LINEAR = {
    "_class_name": "DDPMScheduler",
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "num_train_timesteps": 1000,
}
DDPM_COSINE_SAMPLE = {
    "_class_name": "DDPMScheduler",
    "beta_schedule": "squaredcos_cap_v2",
    "num_train_timesteps": 1000,
    "prediction_type": "sample",
}

DPM = "DPMSolverMultistepScheduler"
EULER = "EulerDiscreteScheduler"
FLOW = "FlowMatchEulerDiscreteScheduler"
DDIM = "DDIMScheduler"

# (name, class, source_config, overrides, num_inference_steps, image_seq_len)
# image_seq_len is set only for dynamic-shift flow cases (FluxPipeline-style set_timesteps).
CASES = [
    ("dpm_sd21_v", DPM, SD21, {}, 50, None),
    ("dpm_sdxl_leading", DPM, SDXL, {}, 50, None),
    ("dpm_sd15_karras", DPM, SD15, {"use_karras_sigmas": True}, 25, None),
    ("dpm_order1", DPM, SD15, {"solver_order": 1}, 20, None),
    ("dpm_order3", DPM, SD15, {"solver_order": 3}, 30, None),
    (
        "dpm_order3_heun_trailing",
        DPM,
        SD15,
        {"solver_order": 3, "solver_type": "heun", "timestep_spacing": "trailing"},
        20,
        None,
    ),
    (
        "dpm_heun_v_sigmamin",
        DPM,
        SD21,
        {"solver_type": "heun", "final_sigmas_type": "sigma_min", "lower_order_final": False},
        15,
        None,
    ),
    ("dpm_euler_at_final_linear", DPM, DDPM_LINEAR, {"euler_at_final": True}, 12, None),
    ("dpm_cosine_sample", DPM, DDPM_COSINE_SAMPLE, {}, 10, None),
    ("dpm_lower_order_final_short", DPM, SD15, {"solver_order": 3}, 8, None),
    ("euler_sd21_v", EULER, SD21, {}, 50, None),
    ("euler_sdxl_leading", EULER, SDXL, {}, 50, None),
    ("euler_sd15_karras", EULER, SD15, {"use_karras_sigmas": True}, 25, None),
    ("euler_trailing_v", EULER, SD21, {"timestep_spacing": "trailing"}, 20, None),
    ("flow_flux_1024", FLOW, FLUX, {}, 50, 4096),
    ("flow_flux_512", FLOW, FLUX, {}, 28, 1024),
    ("flow_sd3_shift", FLOW, SD3, {}, 28, None),
    # DDIM (eta 0): SD-2.1's shipped config (leading, steps_offset 1, v-prediction, no clipping),
    # SD-1.5's betas with trailing spacing and set_alpha_to_one, diffusers' defaults (clip_sample
    # on) with linspace, and a sample-predicting cosine schedule
    ("ddim_sd21_v", DDIM, SD21, {}, 50, None),
    ("ddim_sd15_trailing_alpha_one", DDIM, SD15, {"timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False}, 25, None),
    ("ddim_linear_linspace_clip", DDIM, DDPM_LINEAR, {"timestep_spacing": "linspace"}, 20, None),
    ("ddim_cosine_sample", DDIM, DDPM_COSINE_SAMPLE, {"clip_sample": False}, 10, None),
]


# Copied from diffusers.pipelines.flux.pipeline_flux.calculate_shift (diffusers 0.34.0).
def calculate_shift(
    image_seq_len,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
):
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    mu = image_seq_len * m + b
    return mu


def to_jsonable(value):
    """Convert a config value to plain JSON types; return _DROP if impossible."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _DROP
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (list, tuple)):
        out = [to_jsonable(v) for v in value]
        return _DROP if any(v is _DROP for v in out) else out
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.tolist())
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            jv = to_jsonable(v)
            if jv is not _DROP:
                out[str(k)] = jv
        return out
    return _DROP


_DROP = object()


def flat(t: torch.Tensor):
    assert t.dtype == torch.float32, t.dtype
    return t.detach().reshape(-1).tolist()


def synthetic_model(model_input: torch.Tensor, t, fixed_noise: torch.Tensor) -> torch.Tensor:
    tf = float(t)
    return 0.7 * torch.tanh(model_input) * math.cos(tf / 400.0) + 0.3 * fixed_noise * math.sin(tf / 250.0 + 0.3)


def run_case(name, cls_name, source_config, overrides, num_inference_steps, image_seq_len):
    cls = CLASSES[cls_name]
    torch.manual_seed(SEED)
    scheduler = cls.from_config(copy.deepcopy(source_config), **copy.deepcopy(overrides))
    config = to_jsonable(dict(scheduler.config))
    # diffusers builds this list from a set; sort it so the output is byte-for-byte reproducible.
    if "_use_default_values" in config:
        config["_use_default_values"] = sorted(config["_use_default_values"])

    set_timesteps_kwargs = {}
    if cls_name == FLOW and scheduler.config.use_dynamic_shifting:
        # Mirrors diffusers.FluxPipeline.__call__ (sigmas + mu via retrieve_timesteps).
        assert image_seq_len is not None
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = calculate_shift(
            image_seq_len,
            scheduler.config.get("base_image_seq_len", 256),
            scheduler.config.get("max_image_seq_len", 4096),
            scheduler.config.get("base_shift", 0.5),
            scheduler.config.get("max_shift", 1.15),
        )
        scheduler.set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu)
        set_timesteps_kwargs = {"sigmas": sigmas.tolist(), "mu": float(mu)}
    else:
        assert image_seq_len is None
        scheduler.set_timesteps(num_inference_steps)

    timesteps = [float(t) for t in scheduler.timesteps.tolist()]
    # DDIM keeps no sigmas: its VE sigmas sqrt((1 - a) / a) at each timestep, then after the last
    if cls_name == DDIM:
        ac = scheduler.alphas_cumprod.double()
        stride = scheduler.config.num_train_timesteps // num_inference_steps
        final = 1.0 if scheduler.config.set_alpha_to_one else float(ac[0])
        alphas = [float(ac[int(t)]) for t in scheduler.timesteps] + [float(ac[int(scheduler.timesteps[-1]) - stride]) if int(scheduler.timesteps[-1]) - stride >= 0 else final]
        sigmas_out = [((1 - a) / a) ** 0.5 for a in alphas]
    else:
        sigmas_out = [float(s) for s in torch.as_tensor(scheduler.sigmas).reshape(-1).tolist()]
    # FlowMatchEulerDiscreteScheduler has no init_noise_sigma attribute; Flux/SD3 pipelines
    # use the unscaled randn latents, i.e. an effective init_noise_sigma of 1.0.
    init_noise_sigma = float(scheduler.init_noise_sigma) if cls_name != FLOW else 1.0
    if cls_name == FLOW:
        alphas_cumprod = None
    else:
        alphas_cumprod = flat(scheduler.alphas_cumprod)
        assert len(alphas_cumprod) == 1000

    gen_shape = tuple(SHAPE)
    noise = torch.randn(gen_shape, dtype=torch.float32)
    fixed_noise = torch.randn(gen_shape, dtype=torch.float32)
    sample = noise * init_noise_sigma
    initial_sample = flat(sample)

    steps = []
    for t in scheduler.timesteps:
        if cls_name == FLOW:
            model_input = sample
        else:
            model_input = scheduler.scale_model_input(sample, t)
        model_output = synthetic_model(model_input, t, fixed_noise)
        prev_sample = scheduler.step(model_output, t, sample, generator=None, return_dict=True).prev_sample
        steps.append(
            {
                "model_input": flat(model_input),
                "model_output": flat(model_output),
                "prev_sample": flat(prev_sample),
            }
        )
        sample = prev_sample

    return {
        "name": name,
        "class": cls_name,
        "source_config": source_config,
        "overrides": overrides,
        "config": config,
        "num_inference_steps": num_inference_steps,
        "set_timesteps_kwargs": set_timesteps_kwargs,
        "image_seq_len": image_seq_len,
        "shape": SHAPE,
        "timesteps": timesteps,
        "sigmas": sigmas_out,
        "init_noise_sigma": init_noise_sigma,
        "alphas_cumprod": alphas_cumprod,
        "initial_sample": initial_sample,
        "steps": steps,
    }


def main():
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    os.makedirs(OUT_DIR, exist_ok=True)
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    failed = []
    for case in CASES:
        name = case[0]
        try:
            data = run_case(*case)
        except Exception as e:  # report and skip; never invent data
            print(f"FAILED {name}: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(name)
            continue
        path = os.path.join(OUT_DIR, f"{name}.json")
        with open(path, "w") as f:
            json.dump(data, f, separators=(",", ":"), allow_nan=False)
            f.write("\n")
        print(f"wrote {os.path.relpath(path, REPO_ROOT)} ({len(data['steps'])} steps)")
    if failed:
        print(f"failed cases: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
