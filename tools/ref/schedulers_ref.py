#!/usr/bin/env python3
"""Golden scheduler trajectories from diffusers, for easel's scheduler parity test.

Writes crates/easel-diffusion/tests/fixtures/schedulers.safetensors, read by
crates/easel-diffusion/tests/scheduler_parity.rs.

Everything runs on CPU in float32 with fixed seeds. The "model" is a fixed
deterministic function both sides compute:

    model(x, t) = 0.1 * x + sin(t / 100) * c

with `c` (shape [1, 4, 8, 8]) stored in the fixture. As in diffusers'
pipelines, the model sees `scheduler.scale_model_input(latents, t)`.

Ancestral noise is recorded so the Rust side can inject it: DDIM's
`variance_noise` argument, and for Euler ancestral a stand-in for the
module's `randn_tensor` that hands out pre-drawn tensors.

Keys (all float32 unless noted; timesteps are int64):
  c, x_init (unit noise, scaled by init_noise_sigma), x0 (a "clean" latent),
  x0_noise (noise for add_noise / img2img)
  run/<case>/timesteps, run/<case>/init_noise_sigma (f64 [1]),
  run/<case>/samples [N, 1, 4, 8, 8] (after each step), run/<case>/noise [N, ...]
  img2img50/<sched>/timesteps      (strength 0.7, 50 steps: 35 timesteps)
  img2img/<sched>/{timesteps,start,samples,noise}  (strength 0.7, 20 steps)
  add_noise/<sched>/{steps (int64 [1]),timesteps,out [K, 1, 4, 8, 8]}
  inv/n<N>/{timesteps,latents,recon_timesteps,recon,roundtrip_err (f64 [1])}

Usage: /work/venv/bin/python tools/ref/schedulers_ref.py [OUT]
"""

import math
import os
import sys

import torch
from safetensors.torch import save_file

import diffusers
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_mod
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates/easel-diffusion/tests/fixtures/schedulers.safetensors")

SHAPE = (1, 4, 8, 8)

# Stable Diffusion 1.5's scheduler config (plus the spacing easel uses).
SD15 = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)
DPM = dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True)

CLASSES = {
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
}


def make(sched, **overrides):
    cfg = dict(SD15)
    if sched == "dpm":
        cfg.update(DPM)
    cfg.update(overrides)
    return CLASSES[sched].from_config(cfg)


def model(x, t, c):
    return 0.1 * x + math.sin(float(t) / 100.0) * c


class NoiseFeed:
    """Replaces euler_mod.randn_tensor; returns pre-drawn noises in order."""

    def __init__(self, noises):
        self.noises = list(noises)
        self.used = 0

    def __call__(self, shape, **kwargs):
        n = self.noises[self.used]
        assert tuple(n.shape) == tuple(shape)
        self.used += 1
        return n.clone()


def int_timesteps(ts):
    ts = ts.to(torch.float64)
    assert torch.equal(ts, ts.round()), f"non-integer timesteps {ts}"
    return ts.round().to(torch.int64)


def run(sched, s, latents, timesteps, c, noises, eta):
    """The denoising loop of StableDiffusionPipeline; returns the stacked samples."""
    samples = []
    feed = NoiseFeed(noises) if noises is not None else None
    orig = euler_mod.randn_tensor
    if sched == "euler_a":
        euler_mod.randn_tensor = feed
    try:
        for i, t in enumerate(timesteps):
            inp = s.scale_model_input(latents, t)
            eps = model(inp, t, c)
            kwargs = {}
            if sched == "ddim":
                kwargs["eta"] = eta
                if eta > 0:
                    kwargs["variance_noise"] = noises[i]
            latents = s.step(eps, t, latents, **kwargs).prev_sample
            samples.append(latents.clone())
    finally:
        euler_mod.randn_tensor = orig
    if sched == "euler_a":
        assert feed.used == len(timesteps)
    return torch.stack(samples)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else OUT
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1234)
    c = torch.randn(SHAPE, generator=g)
    x_init = torch.randn(SHAPE, generator=g)
    x0 = torch.randn(SHAPE, generator=g).clamp(-2, 2) * 0.8
    x0_noise = torch.randn(SHAPE, generator=g)
    t = {"c": c, "x_init": x_init, "x0": x0, "x0_noise": x0_noise}

    def noises(n):
        return torch.randn((n,) + SHAPE, generator=g)

    # Full text-to-image runs: (case, scheduler, steps, eta, config overrides).
    cases = [
        ("ddim_eta0_n10", "ddim", 10, 0.0, {}),
        ("ddim_eta0_n25", "ddim", 25, 0.0, {}),
        ("ddim_eta1_n10", "ddim", 10, 1.0, {}),
        ("ddim_eta1_n25", "ddim", 25, 1.0, {}),
        ("ddim_v_n10", "ddim", 10, 0.0, {"prediction_type": "v_prediction"}),
        ("ddim_trailing_n10", "ddim", 10, 0.0, {"timestep_spacing": "trailing"}),
        ("ddim_linspace_n10", "ddim", 10, 0.0, {"timestep_spacing": "linspace"}),
        ("dpm_n10", "dpm", 10, 0.0, {}),
        ("dpm_n25", "dpm", 25, 0.0, {}),
        ("dpm_v_n10", "dpm", 10, 0.0, {"prediction_type": "v_prediction"}),
        ("dpm_linspace_n20", "dpm", 20, 0.0, {"timestep_spacing": "linspace"}),
        ("dpm_trailing_n10", "dpm", 10, 0.0, {"timestep_spacing": "trailing"}),
        ("euler_a_n10", "euler_a", 10, 0.0, {}),
        ("euler_a_n25", "euler_a", 25, 0.0, {}),
        ("euler_a_v_n10", "euler_a", 10, 0.0, {"prediction_type": "v_prediction"}),
        ("euler_a_linspace_n10", "euler_a", 10, 0.0, {"timestep_spacing": "linspace"}),
        ("euler_a_trailing_n10", "euler_a", 10, 0.0, {"timestep_spacing": "trailing"}),
    ]
    for name, sched, n, eta, over in cases:
        s = make(sched, **over)
        s.set_timesteps(n)
        ns = noises(n) if (sched == "euler_a" or eta > 0) else None
        sigma0 = float(s.init_noise_sigma)
        latents = x_init * s.init_noise_sigma
        samples = run(sched, s, latents, s.timesteps, c, ns, eta)
        p = f"run/{name}/"
        t[p + "timesteps"] = int_timesteps(s.timesteps)
        t[p + "init_noise_sigma"] = torch.tensor([sigma0], dtype=torch.float64)
        t[p + "samples"] = samples
        if ns is not None:
            t[p + "noise"] = ns

    # img2img, as StableDiffusionImg2ImgPipeline.get_timesteps + prepare_latents.
    def img2img_timesteps(s, steps, strength):
        init_timestep = min(int(steps * strength), steps)
        t_start = max(steps - init_timestep, 0)
        ts = s.timesteps[t_start * s.order :]
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(t_start * s.order)
        return ts, t_start

    for sched in CLASSES:
        s = make(sched)
        s.set_timesteps(50)
        ts, _ = img2img_timesteps(s, 50, 0.7)
        assert len(ts) == 35, len(ts)
        t[f"img2img50/{sched}/timesteps"] = int_timesteps(ts)

        s = make(sched)
        s.set_timesteps(20)
        ts, start = img2img_timesteps(s, 20, 0.7)
        latents = s.add_noise(x0, x0_noise, ts[:1])
        ns = noises(len(ts)) if sched == "euler_a" else None
        samples = run(sched, s, latents, ts, c, ns, 0.0)
        p = f"img2img/{sched}/"
        t[p + "timesteps"] = int_timesteps(ts)
        t[p + "start"] = torch.tensor([start], dtype=torch.int64)
        t[p + "samples"] = torch.cat([latents[None], samples])
        if ns is not None:
            t[p + "noise"] = ns

    # add_noise at several timesteps (in a 50-step schedule for the sigma-based ones).
    for sched in CLASSES:
        s = make(sched)
        s.set_timesteps(50)
        if sched == "ddim":
            ts = [1, 250, 500, 999]
        else:
            ts = [int(s.timesteps[i]) for i in (0, 15, 35, 49)]
        outs = []
        for tt in ts:
            tt_tensor = s.timesteps[s.timesteps == tt][:1] if sched != "ddim" else torch.tensor([tt])
            outs.append(s.add_noise(x0, x0_noise, tt_tensor))
        p = f"add_noise/{sched}/"
        t[p + "steps"] = torch.tensor([50], dtype=torch.int64)
        t[p + "timesteps"] = torch.tensor(ts, dtype=torch.int64)
        t[p + "out"] = torch.stack(outs)

    # DDIM inversion round trip: x0 -> xT with DDIMInverseScheduler, back with DDIM.
    for n in (10, 25):
        inv = DDIMInverseScheduler.from_config(SD15)
        inv.set_timesteps(n)
        lat = x0.clone()
        inv_samples = []
        for tt in inv.timesteps:
            lat = inv.step(model(lat, tt, c), tt, lat).prev_sample
            inv_samples.append(lat.clone())
        fwd = make("ddim")
        fwd.set_timesteps(n)
        rec = run("ddim", fwd, lat, fwd.timesteps, c, None, 0.0)
        p = f"inv/n{n}/"
        t[p + "timesteps"] = inv.timesteps.to(torch.int64)
        t[p + "latents"] = torch.stack(inv_samples)
        t[p + "recon_timesteps"] = fwd.timesteps.to(torch.int64)
        t[p + "recon"] = rec
        err = (rec[-1] - x0).abs().max().item()
        t[p + "roundtrip_err"] = torch.tensor([err], dtype=torch.float64)
        print(f"inversion n={n}: round-trip max abs err {err:.3e}")

    t = {k: v.contiguous() for k, v in t.items()}
    meta = {
        "generator": "tools/ref/schedulers_ref.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    save_file(t, out, metadata=meta)
    size = os.path.getsize(out)
    print(f"wrote {len(t)} tensors, {size} bytes to {out}")


if __name__ == "__main__":
    main()
