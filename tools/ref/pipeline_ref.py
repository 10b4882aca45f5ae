#!/usr/bin/env python3
"""Golden end-to-end runs of diffusers' ControlNet img2img and img2img pipelines on tiny
random models, for easel's pipeline parity test (crates/easel-pipeline/tests/pipeline_parity.rs).

Writes, into crates/easel-pipeline/tests/fixtures/:
  tiny-sd/          a diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/,
                    tokenizer/, scheduler/ with SD 1.5's DDIM settings), fp32 safetensors
  tiny-controlnet/  a diffusers ControlNetModel folder (config.json + safetensors)
  pipeline_cases.safetensors   inputs, noises and outputs of every case (keys below)
  pipeline_cases.json          the settings of every case (prompt, scheduler, strength, ...)

Models: tiny random configs (hidden sizes 16-32), every parameter perturbed with N(0, 0.05)
after construction (so the ControlNet's zero convolutions carry signal), seeded. The text
encoder's tokenizer is crates/easel-diffusion/tests/fixtures/tokenizer_small.json (a
reduced-vocabulary CLIP tokenizer.json written by transformers).

Noise: every `randn_tensor` call of the pipelines (the VAE posterior sample, the img2img noise,
the scheduler's per-step noise) is answered by a seeded torch generator and recorded in call
order as `<case>/noise.<k>`; easel's test replays them in the same order.

Keys of pipeline_cases.safetensors (float32 unless said):
  image_u8 [64, 64, 3] uint8     the photo (examples/chelsea_cat.png, center crop, resized 64x64)
  control_u8 [64, 64, 3] uint8   its control image (gradient-magnitude edges, white on black)
  <case>/noise.<k>               the k-th random tensor drawn
  <case>/latents.<i>             the latents after step i (callback_on_step_end)
  <case>/image [B, 64, 64, 3]    the final image, output_type="np" (in [0, 1])

Usage: /work/venv/bin/python tools/ref/pipeline_ref.py   (diffusers 0.42.1, torch CPU, f32)
"""

import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import diffusers
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "crates/easel-pipeline/tests/fixtures")
TOKENIZER_JSON = os.path.join(ROOT, "crates/easel-diffusion/tests/fixtures/tokenizer_small.json")
PHOTO = os.path.join(ROOT, "examples/chelsea_cat.png")

SIZE = 64
DIM = 32  # CLIP width = UNet / ControlNet cross-attention dim

UNET = dict(
    sample_size=SIZE // 8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 32),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=DIM,
    attention_head_dim=4,
    norm_num_groups=8,
)

CONTROLNET = dict(
    in_channels=4,
    conditioning_channels=3,
    block_out_channels=(16, 32),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    cross_attention_dim=DIM,
    attention_head_dim=4,
    norm_num_groups=8,
    conditioning_embedding_out_channels=(4, 8, 8, 16),
)

VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=SIZE,
)

# SD 1.5's scheduler settings, as a DDIM config.
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)

PROMPT = "a painting of a cat, starry night"
NEGATIVE = "blurry, ugly"

# name -> settings; "controlnet": False runs StableDiffusionImg2ImgPipeline.
CASES = {
    "ddim": dict(scheduler="ddim", controlnet=True),
    "euler_a_batch2": dict(scheduler="euler-a", controlnet=True, batch=2),
    "dpmpp2m_guess": dict(
        scheduler="dpm++2m", controlnet=True, guess_mode=True, control_start=0.2, control_end=0.7
    ),
    "ddim_no_cfg_window": dict(
        scheduler="ddim", controlnet=True, guidance=1.0, control_start=0.0, control_end=0.5
    ),
    "img2img_ddim_eta": dict(scheduler="ddim", controlnet=False, eta=0.3),
}
DEFAULTS = dict(
    prompt=PROMPT,
    negative_prompt=NEGATIVE,
    strength=0.7,
    steps=10,
    guidance=7.5,
    eta=0.0,
    control_scale=0.8,
    control_start=0.0,
    control_end=1.0,
    guess_mode=False,
    batch=1,
)


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def build_models():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET).eval()
    perturb(unet)
    controlnet = ControlNetModel(**CONTROLNET).eval()
    perturb(controlnet)
    vae = AutoencoderKL(**VAE).eval()
    perturb(vae)
    tokenizer = CLIPTokenizer(tokenizer_file=TOKENIZER_JSON, model_max_length=77)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config).eval()
    perturb(text_encoder)
    scheduler = DDIMScheduler(**SCHEDULER)
    return unet, controlnet, vae, tokenizer, text_encoder, scheduler


def photo_and_control():
    img = Image.open(PHOTO).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((SIZE, SIZE), Image.LANCZOS)
    image = np.asarray(img, dtype=np.uint8).copy()
    gray = image.astype(np.float32).mean(axis=2)
    gy, gx = np.gradient(gray)
    edges = (np.hypot(gx, gy) > 24).astype(np.uint8) * 255
    control = np.repeat(edges[:, :, None], 3, axis=2)
    return image, control


class NoiseRecorder:
    """Replaces diffusers' randn_tensor everywhere the pipelines use it; records the draws."""

    MODULES = [
        diffusers.utils.torch_utils,
        diffusers.models.autoencoders.vae,
        diffusers.pipelines.controlnet.pipeline_controlnet_img2img,
        diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img,
        diffusers.schedulers.scheduling_ddim,
        diffusers.schedulers.scheduling_euler_ancestral_discrete,
        diffusers.schedulers.scheduling_dpmsolver_multistep,
    ]

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)
        self.draws = []
        self.saved = []

    def randn(self, shape, generator=None, device=None, dtype=None, layout=None):
        x = torch.randn(tuple(shape), generator=self.gen, dtype=torch.float32)
        self.draws.append(x.clone())
        return x.to(dtype=dtype or torch.float32)

    def __enter__(self):
        for m in self.MODULES:
            self.saved.append((m, m.randn_tensor))
            m.randn_tensor = self.randn
        return self

    def __exit__(self, *exc):
        for m, f in self.saved:
            m.randn_tensor = f


def make_scheduler(name, base):
    if name == "ddim":
        return DDIMScheduler.from_config(base.config)
    if name == "euler-a":
        return EulerAncestralDiscreteScheduler.from_config(base.config)
    if name == "dpm++2m":
        return DPMSolverMultistepScheduler.from_config(base.config)
    raise ValueError(name)


def main():
    unet, controlnet, vae, tokenizer, text_encoder, scheduler = build_models()
    sd_dir = os.path.join(FIXTURES, "tiny-sd")
    cn_dir = os.path.join(FIXTURES, "tiny-controlnet")
    for d in (sd_dir, cn_dir):
        shutil.rmtree(d, ignore_errors=True)
    base = StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    base.save_pretrained(sd_dir, safe_serialization=True)
    controlnet.save_pretrained(cn_dir, safe_serialization=True)

    image, control = photo_and_control()
    out = {"image_u8": torch.from_numpy(image), "control_u8": torch.from_numpy(control)}
    settings = {}
    for seed, (name, case) in enumerate(CASES.items()):
        cfg = dict(DEFAULTS, **case)
        settings[name] = cfg
        sched = make_scheduler(cfg["scheduler"], scheduler)
        common = dict(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sched,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        latents = []

        def on_step(pipe, i, t, kwargs):
            latents.append(kwargs["latents"].clone())
            return {}

        kwargs = dict(
            prompt=cfg["prompt"],
            negative_prompt=cfg["negative_prompt"],
            image=Image.fromarray(image),
            strength=cfg["strength"],
            num_inference_steps=cfg["steps"],
            guidance_scale=cfg["guidance"],
            eta=cfg["eta"],
            num_images_per_prompt=cfg["batch"],
            output_type="np",
            callback_on_step_end=on_step,
        )
        if cfg["controlnet"]:
            pipe = StableDiffusionControlNetImg2ImgPipeline(controlnet=controlnet, **common)
            kwargs.update(
                control_image=Image.fromarray(control),
                controlnet_conditioning_scale=cfg["control_scale"],
                control_guidance_start=cfg["control_start"],
                control_guidance_end=cfg["control_end"],
                guess_mode=cfg["guess_mode"],
            )
        else:
            pipe = StableDiffusionImg2ImgPipeline(**common)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad(), NoiseRecorder(1000 + seed) as rec:
            result = pipe(**kwargs).images
        for k, n in enumerate(rec.draws):
            out[f"{name}/noise.{k}"] = n.contiguous()
        for i, l in enumerate(latents):
            out[f"{name}/latents.{i}"] = l.float().contiguous()
        out[f"{name}/image"] = torch.from_numpy(np.ascontiguousarray(result, dtype=np.float32))
        print(name, "draws", [tuple(n.shape) for n in rec.draws], "image", result.shape,
              "range", float(result.min()), float(result.max()), "std", float(result.std()))

    save_file(out, os.path.join(FIXTURES, "pipeline_cases.safetensors"))
    with open(os.path.join(FIXTURES, "pipeline_cases.json"), "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
