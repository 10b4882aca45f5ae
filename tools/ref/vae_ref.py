#!/usr/bin/env python3
"""Golden outputs of diffusers' ResnetBlock2D, Downsample2D, Upsample2D and AutoencoderKL.

Writes, under crates/easel-diffusion/tests/fixtures/:
  vae_blocks.safetensors  read by crates/easel-diffusion/tests/resnet_parity.rs
  vae_tiny.safetensors    read by crates/easel-diffusion/tests/vae_parity.rs (see below)

Everything runs on CPU in float32 with fixed seeds (torch.manual_seed). Parameters are
re-drawn at random (including the group-norm affines, which diffusers initialises to 1/0) so
every weight matters; state-dict keys are stored exactly as diffusers names them.

vae_blocks.safetensors keys, for each case <c> in RESNET_CASES and SAMPLER_CASES:
  <c>.<diffusers state-dict key>  the module's parameters
  <c>/x, <c>/temb (when used), <c>/out

vae_tiny.safetensors keys, for each AutoencoderKL config <v> in VAE_CONFIGS:
  <v>.<diffusers state-dict key>  the model's parameters (encoder.*, decoder.*, quant_conv.*, ...)
  <v>/image [B, 3, H, W] in [-1, 1]
  <v>/mean, <v>/logvar          the posterior's (logvar clamped to [-30, 20] as diffusers)
  <v>/noise, <v>/sample         sample = mean + exp(logvar / 2) * noise
  <v>/decoded                   decode(sample)
and for the tiled case (config "deep" with tile_sample_min_size 16, tile_latent_min_size 4,
overlap 0.25):
  tiled/latents, tiled/decoded  diffusers' tiled_decode (via decode with use_tiling)
  tiled/image, tiled/moments    diffusers' _tiled_encode (mean and logvar concatenated, unclamped)

Usage: /work/venv/bin/python tools/ref/vae_ref.py
"""


import torch

from diffusers import AutoencoderKL
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D

from _common import save_fixture



def randomize(module, scale=0.2):
    """Re-draws every parameter from N(0, scale²), group-norm weights around 1."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.split(".")[-2].startswith("norm") and name.endswith("weight"):
                p.copy_(1.0 + scale * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))


def put(out, prefix, module):
    for k, v in module.state_dict().items():
        out[f"{prefix}.{k}"] = v.detach().clone().contiguous()


# Cases mirrored by the table in tests/resnet_parity.rs.
RESNET_CASES = {
    # name: (constructor kwargs, input shape, temb shape or None)
    "resnet_temb": (
        dict(in_channels=16, out_channels=16, temb_channels=12, groups=4, eps=1e-6),
        (2, 16, 6, 5),
        (2, 12),
    ),
    "resnet_no_temb_shortcut": (
        dict(in_channels=8, out_channels=16, temb_channels=None, groups=4, groups_out=8, eps=1e-6),
        (1, 8, 7, 6),
        None,
    ),
    "resnet_temb_shortcut_scaled": (
        dict(
            in_channels=16,
            out_channels=24,
            temb_channels=10,
            groups=8,
            eps=1e-5,
            output_scale_factor=2.0,
        ),
        (2, 16, 4, 4),
        (2, 10),
    ),
    "resnet_forced_shortcut": (
        dict(in_channels=8, out_channels=8, temb_channels=6, groups=2, use_in_shortcut=True),
        (1, 8, 5, 5),
        (1, 6),
    ),
}

SAMPLER_CASES = {
    # name: (kind, constructor kwargs, input shape, forward kwargs)
    "down_pad1": ("down", dict(channels=8, use_conv=True, out_channels=8, padding=1, name="op"), (2, 8, 7, 6), {}),
    "down_pad0": ("down", dict(channels=8, use_conv=True, out_channels=12, padding=0, name="op"), (1, 8, 7, 6), {}),
    "up_x2": ("up", dict(channels=8, use_conv=True, out_channels=8), (2, 8, 3, 4), {}),
    "up_size": ("up", dict(channels=8, use_conv=True, out_channels=6), (1, 8, 3, 4), dict(output_size=(7, 9))),
}


def blocks():
    torch.manual_seed(0)
    out = {}
    for name, (kwargs, x_shape, temb_shape) in RESNET_CASES.items():
        block = ResnetBlock2D(**kwargs).eval()
        randomize(block)
        x = torch.randn(x_shape)
        temb = torch.randn(temb_shape) if temb_shape else None
        with torch.no_grad():
            y = block(x, temb)
        put(out, name, block)
        out[f"{name}/x"] = x
        if temb is not None:
            out[f"{name}/temb"] = temb
        out[f"{name}/out"] = y
    for name, (kind, kwargs, x_shape, fwd) in SAMPLER_CASES.items():
        cls = Downsample2D if kind == "down" else Upsample2D
        module = cls(**kwargs).eval()
        randomize(module)
        x = torch.randn(x_shape)
        with torch.no_grad():
            y = module(x, **fwd)
        # Downsample2D(name="op") registers the conv once, as `conv`.
        put(out, name, module)
        out[f"{name}/x"] = x
        out[f"{name}/out"] = y
    save_fixture(out, "vae_blocks.safetensors")


# AutoencoderKL configs mirrored by tests/vae_parity.rs.
VAE_CONFIGS = {
    # diffusers' own tiny test config (AutoencoderKLConfig::tiny()).
    "tiny": dict(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    ),
    # SD1.x's layout in miniature: three levels, two resnets per level, equal last channels.
    "deep": dict(
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ),
}
IMAGE_SHAPES = {"tiny": (1, 3, 32, 32), "deep": (2, 3, 24, 16)}


def vae():
    torch.manual_seed(1)
    out = {}
    models = {}
    for name, cfg in VAE_CONFIGS.items():
        model = AutoencoderKL(**cfg).eval()
        randomize(model, scale=0.1)
        models[name] = model
        put(out, name, model)
        image = torch.rand(IMAGE_SHAPES[name]) * 2 - 1
        with torch.no_grad():
            dist = model.encode(image).latent_dist
            noise = torch.randn(dist.mean.shape)
            sample = dist.mean + dist.std * noise
            decoded = model.decode(sample).sample
        out[f"{name}/image"] = image
        out[f"{name}/mean"] = dist.mean.contiguous()
        out[f"{name}/logvar"] = dist.logvar.contiguous()
        out[f"{name}/noise"] = noise
        out[f"{name}/sample"] = sample.contiguous()
        out[f"{name}/decoded"] = decoded

    model = models["deep"]
    model.enable_tiling()
    model.tile_sample_min_size = 16
    model.tile_latent_min_size = 4
    model.tile_overlap_factor = 0.25
    latents = torch.randn(1, 4, 10, 7)
    image = torch.rand(1, 3, 40, 32) * 2 - 1
    with torch.no_grad():
        decoded = model.decode(latents).sample
        moments = model._tiled_encode(image)
    out["tiled/latents"] = latents
    out["tiled/decoded"] = decoded
    out["tiled/image"] = image
    out["tiled/moments"] = moments

    save_fixture(out, "vae_tiny.safetensors")


if __name__ == "__main__":
    blocks()
    vae()
