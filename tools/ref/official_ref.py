#!/usr/bin/env python3
"""Golden runs of the official LSAST and ArtBank inference logic, reimplemented with diffusers
components on the tiny random models of pipeline_ref.py, for easel's parity test
(crates/easel-pipeline/tests/pipeline_parity.rs, `matches_the_official_inference_logic`).

What the official code does (read in Jamie-Cheung/ArtBank test.py and Jamie-Cheung/LSAST
ldm/models/diffusion/ddim.py):

- ArtBank's stochastic inversion: t = int(strength * 1000); x_noisy = q_sample(x0, t) with fresh
  noise; eps = UNet(x_noisy, t, cond) (conditional only, no guidance); z = sqrt(abar_t) x0 +
  sqrt(1 - abar_t) eps (stochastic_encode(..., noise=eps, use_original_steps=True)); then DDIM
  decode over the first int(strength * steps) DDIM timesteps, from the highest down, with
  classifier-free guidance.
- LSAST's ControlNet under guidance: the ControlNet runs once on the conditional context and its
  residuals are added to both halves of the [uncond, cond] UNet batch.
- LSAST's img2img start (case lsast_ldm_start), the CompVis ldm code's: `stochastic_encode(x0,
  t_enc)` noises the latents to DDIM timestep index t_enc = int(strength * steps) (701 for 50
  steps at 0.7), then `decode` runs from index t_enc - 1 (681): one schedule step above where
  diffusers' img2img noises them.
- LSAST's window indexing (case lsast_windows): the prompt generator's 30 vectors are read as
  cond[k:k+3] at stage k = int(t * 10 / 1000), one per layer group (down blocks, mid block, up
  blocks), so layer group g of stage k reads vector k + g. Each group's vector replaces the
  placeholder's token embedding in the prompt, CLIP encodes it, and forward pre-hooks on every
  Transformer2DModel of the UNet and the ControlNet give each layer its group's context (the
  unconditional half stays the empty prompt's). The 30 vectors are random (seeded) and saved,
  so the test builds the same bank.

The DDIM timesteps of ldm (range(0, 1000, 1000 // steps) + 1) and its alphas_prev
(alphas_cumprod[0] first) are diffusers' DDIMScheduler with SD's steps_offset=1 and
set_alpha_to_one=False, so the sampler here is diffusers'. The models are loaded from the
fixtures pipeline_ref.py wrote (tiny-sd/, tiny-controlnet/), so this script changes no other
fixture.

Writes crates/easel-pipeline/tests/fixtures/official_cases.safetensors and official_cases.json:
  <case>/noise.<k>   the k-th random tensor drawn (posterior sample, then the start noise)
  <case>/latents     the final latents (scaled by the VAE's scaling factor)
  <case>/image       [B, 64, 64, 3] the decoded image in [0, 1]
  lsast_windows/vectors  [30, D] the bank's vectors, slot (k, g) reading row k + g
The photo and control image are pipeline_cases.safetensors' image_u8 / control_u8.

Read by pipeline_parity.rs (all cases but lsast_windows) and
crates/easel-bank/tests/official_windows.rs (lsast_windows).

Usage: /work/venv/bin/python tools/ref/official_ref.py   (diffusers 0.42.1, torch CPU, f32)
"""

import json
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionImg2ImgPipeline,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "crates/easel-pipeline/tests/fixtures")

PROMPT = "a painting of a cat, starry night"

# name -> settings (the official defaults where they apply: guidance 10, empty negative prompt).
CASES = {
    "artbank_inversion": dict(
        scheduler="ddim", controlnet=False, noise_start="stochastic-inversion",
        control_guidance="batch",
    ),
    "lsast_cond_only": dict(
        scheduler="ddim", controlnet=True, noise_start="img2img", control_guidance="cond-only",
    ),
    "inversion_cond_only_dpm": dict(
        scheduler="dpm++2m", controlnet=True, noise_start="stochastic-inversion",
        control_guidance="cond-only", strength=0.6, batch=2,
    ),
    "lsast_windows": dict(
        scheduler="ddim", controlnet=True, noise_start="img2img", control_guidance="cond-only",
        windows=dict(stages=10, groups=3, template="a painting in the style of {}",
                     placeholder="<easel-style>"),
    ),
    "lsast_ldm_start": dict(
        scheduler="ddim", controlnet=True, noise_start="ldm-img2img", control_guidance="cond-only",
    ),
}
DEFAULTS = dict(
    prompt=PROMPT,
    negative_prompt="",
    strength=0.7,
    steps=10,
    guidance=10.0,
    eta=0.0,
    control_scale=0.8,
    control_start=0.0,
    control_end=1.0,
    guess_mode=False,
    batch=1,
)


class Noise:
    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)
        self.draws = []

    def __call__(self, shape):
        x = torch.randn(tuple(shape), generator=self.gen, dtype=torch.float32)
        self.draws.append(x.clone())
        return x


class WindowBank:
    """LSAST's official indexing: layer group g at stage k reads vector k + g."""

    def __init__(self, pipe, spec, seed):
        self.stages, self.groups = spec["stages"], spec["groups"]
        tokenizer, self.clip = pipe.tokenizer, pipe.text_encoder
        tokenizer.add_tokens([spec["placeholder"]])
        self.placeholder_id = tokenizer.convert_tokens_to_ids(spec["placeholder"])
        prompt = spec["template"].replace("{}", spec["placeholder"])
        self.ids = tokenizer(prompt, padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
        assert int((self.ids == self.placeholder_id).sum()) == 1
        width = self.clip.config.hidden_size
        gen = torch.Generator().manual_seed(seed)
        self.vectors = torch.randn(self.stages * self.groups, width, generator=gen) * 0.5

    def encode(self, vector):
        """CLIP's last hidden state of the template with `vector` as the placeholder."""
        embedding = self.clip.embeddings.token_embedding
        mask = self.ids == self.placeholder_id
        # The added id is outside the token table: look up id 0, then put the vector there.
        pre = embedding.register_forward_pre_hook(
            lambda m, args: (args[0].masked_fill(mask, 0),))
        post = embedding.register_forward_hook(
            lambda m, args, out: torch.where(mask.unsqueeze(-1), vector, out))
        try:
            return self.clip(self.ids).last_hidden_state
        finally:
            pre.remove()
            post.remove()

    def stage_contexts(self, t):
        k = min(int(t) * self.stages // 1000, self.stages - 1)
        return [self.encode(self.vectors[k + g]) for g in range(self.groups)]


class Routed:
    """Forward pre-hooks giving each Transformer2DModel its layer group's context: a batch of
    2B is [uncond x B, group context x B], a batch of B the group context only."""

    def __init__(self, models):
        self.contexts, self.uncond, self.batch, self.hooks = None, None, 0, []
        for model in models:
            blocks = [(0, b) for b in model.down_blocks] + [(1, model.mid_block)]
            if hasattr(model, "up_blocks"):
                blocks += [(2, b) for b in model.up_blocks]
            for group, block in blocks:
                for attn in getattr(block, "attentions", []) or []:
                    self.hooks.append(attn.register_forward_pre_hook(
                        self.hook(group), with_kwargs=True))

    def hook(self, group):
        def swap(module, args, kwargs):
            if self.contexts is None:
                return None
            ctx, b = self.contexts[group], kwargs["encoder_hidden_states"].shape[0]
            if b == 2 * self.batch:
                new = torch.cat([self.uncond.repeat(self.batch, 1, 1),
                                 ctx.repeat(self.batch, 1, 1)])
            else:
                new = ctx.repeat(b, 1, 1)
            kwargs["encoder_hidden_states"] = new
            return args, kwargs
        return swap

    def remove(self):
        for h in self.hooks:
            h.remove()


def to_tensor(u8):
    """[H, W, 3] uint8 -> [1, 3, H, W] float in [0, 1]."""
    return u8.float().div(255.0).permute(2, 0, 1).unsqueeze(0)


def run(case, pipe, controlnet, photo, control, noise, bank=None, routed=None):
    unet, vae = pipe.unet, pipe.vae
    if case["scheduler"] == "ddim":
        sched = DDIMScheduler.from_config(pipe.scheduler.config)
    else:
        sched = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    batch = case["batch"]
    cond, uncond = pipe.encode_prompt(case["prompt"], "cpu", 1, True, case["negative_prompt"])
    cond = cond.repeat(batch, 1, 1)
    uncond = uncond.repeat(batch, 1, 1)

    # The photo's posterior sample (easel draws it with batch 1, then repeats the latents).
    posterior = vae.encode(photo * 2.0 - 1.0).latent_dist
    sample = posterior.mean + posterior.std * noise(posterior.mean.shape)
    x0 = (sample * vae.config.scaling_factor).repeat(batch, 1, 1, 1)
    start_noise = noise(x0.shape)

    steps, strength = case["steps"], case["strength"]
    sched.set_timesteps(steps)
    t_start = steps - int(steps * strength)
    timesteps = sched.timesteps[t_start:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)

    image = control.repeat(batch, 1, 1, 1) if controlnet is not None else None
    abar = sched.alphas_cumprod.to(torch.float64)

    if case["noise_start"] == "stochastic-inversion":
        t = int(strength * 1000)
        a = abar[t]
        noised = (a.sqrt() * x0 + (1 - a).sqrt() * start_noise).float()
        residuals = {}
        if controlnet is not None:
            down, mid = controlnet(
                noised, t, encoder_hidden_states=cond, controlnet_cond=image,
                conditioning_scale=case["control_scale"], return_dict=False,
            )
            residuals = dict(down_block_additional_residuals=down,
                             mid_block_additional_residual=mid)
        eps = unet(noised, t, encoder_hidden_states=cond, **residuals).sample
        latents = (a.sqrt() * x0 + (1 - a).sqrt() * eps).float()
    elif case["noise_start"] == "ldm-img2img":
        # ldm: stochastic_encode(x0, t_enc) at DDIM index t_enc = int(strength * steps), then
        # decode from index t_enc - 1: noised one schedule step above the first denoising step.
        above = sched.timesteps[t_start - 1:t_start] if t_start > 0 else timesteps[:1]
        latents = sched.add_noise(x0, start_noise, above)
    else:
        latents = sched.add_noise(x0, start_noise, timesteps[:1])

    contexts = torch.cat([uncond, cond])
    if routed is not None:
        routed.uncond, routed.batch = uncond[:1], batch
    for t in timesteps:
        if routed is not None:
            routed.contexts = bank.stage_contexts(t)
        model_in = sched.scale_model_input(torch.cat([latents, latents]), t)
        residuals = {}
        if controlnet is not None:
            if case["control_guidance"] == "cond-only":
                half_in = sched.scale_model_input(latents, t)
                down, mid = controlnet(
                    half_in, t, encoder_hidden_states=cond, controlnet_cond=image,
                    conditioning_scale=case["control_scale"], return_dict=False,
                )
                down = [torch.cat([d, d]) for d in down]
                mid = torch.cat([mid, mid])
            else:
                down, mid = controlnet(
                    model_in, t, encoder_hidden_states=contexts,
                    controlnet_cond=torch.cat([image, image]),
                    conditioning_scale=case["control_scale"], return_dict=False,
                )
            residuals = dict(down_block_additional_residuals=down,
                             mid_block_additional_residual=mid)
        pred = unet(model_in, t, encoder_hidden_states=contexts, **residuals).sample
        pred_uncond, pred_cond = pred.chunk(2)
        pred = pred_uncond + case["guidance"] * (pred_cond - pred_uncond)
        latents = sched.step(pred, t, latents).prev_sample

    decoded = vae.decode(latents / vae.config.scaling_factor).sample
    decoded = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    return latents, decoded


def main():
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        os.path.join(FIXTURES, "tiny-sd"), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    controlnet = ControlNetModel.from_pretrained(os.path.join(FIXTURES, "tiny-controlnet")).eval()
    inputs = load_file(os.path.join(FIXTURES, "pipeline_cases.safetensors"))
    photo = to_tensor(inputs["image_u8"])
    control = to_tensor(inputs["control_u8"])

    out, settings = {}, {}
    for seed, (name, case) in enumerate(CASES.items()):
        cfg = dict(DEFAULTS, **case)
        settings[name] = cfg
        noise = Noise(2000 + seed)
        bank = routed = None
        if "windows" in cfg:
            bank = WindowBank(pipe, cfg["windows"], 3000 + seed)
            routed = Routed([pipe.unet, controlnet])
            out[f"{name}/vectors"] = bank.vectors.contiguous()
        with torch.no_grad():
            latents, image = run(cfg, pipe, controlnet if cfg["controlnet"] else None,
                                 photo, control, noise, bank, routed)
        if routed is not None:
            routed.remove()
        for k, n in enumerate(noise.draws):
            out[f"{name}/noise.{k}"] = n.contiguous()
        out[f"{name}/latents"] = latents.float().contiguous()
        out[f"{name}/image"] = image.float().contiguous()
        print(name, "latents std", float(latents.std()), "image range",
              float(image.min()), float(image.max()))

    save_file(out, os.path.join(FIXTURES, "official_cases.safetensors"))
    with open(os.path.join(FIXTURES, "official_cases.json"), "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
