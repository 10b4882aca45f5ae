#!/usr/bin/env python3
"""Reference key maps between diffusers state dicts and original (LDM) single-file
checkpoints, checked against diffusers' own converters, for easel's weights tests.

diffusers 0.42.1 ships only the LDM -> diffusers direction
(`diffusers.loaders.single_file_utils`: convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, convert_controlnet_checkpoint).
This script writes each diffusers state dict under LDM keys (`to_ldm_*` below, written
from the original model trees: ldm's openaimodel.UNetModel, the VAE's Encoder/Decoder,
cldm's ControlNet), runs diffusers' converter on the result and asserts that it gives back
exactly the original keys and tensors (bitwise for the tiny fixtures, keys and shapes for
the full-size SD 1.5 models, built on the meta device). So the (LDM key, diffusers key)
pairs written out are diffusers' mapping.

Writes crates/easel-diffusion/tests/fixtures/weights_ref.json:
  "maps": {case: [[ldm_key, diffusers_key, ldm_shape], ...]} for the cases
      unet_tiny, controlnet_tiny, vae_tiny, vae_deep, clip_tiny (the weights of the
      unet_tiny / controlnet_tiny / vae_tiny / clip_quick_gelu fixtures) and
      unet_sd15, controlnet_sd15, vae_sd15, clip_sd15 (SD 1.5 configs);
  "configs": {case: config.json text as diffusers / transformers save it} for
      unet_tiny, controlnet_tiny, vae_tiny, vae_deep, clip_tiny, unet_sd15,
      controlnet_sd15, vae_sd15, clip_sd15.
Read by crates/easel-diffusion/tests/weights_keys.rs and weights_config.rs.

Usage: /work/venv/bin/python tools/ref/weights_ref.py
"""

import json
import os

import torch
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

from _common import FIXTURES


# Mirrors UNet2DConditionModelConfig::tiny() / ControlNetConfig::tiny() (tools/ref/unet_ref.py).
UNET_TINY = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
    layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
    attention_head_dim=4, norm_num_groups=8, flip_sin_to_cos=True, freq_shift=0,
    use_linear_projection=False,
)
CONTROLNET_TINY = dict(
    in_channels=4, conditioning_channels=3, block_out_channels=(16, 32), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=16,
    attention_head_dim=4, norm_num_groups=8, flip_sin_to_cos=True, freq_shift=0,
    use_linear_projection=False, conditioning_embedding_out_channels=(4, 8, 8, 16),
)
# tools/ref/vae_ref.py's configs.
VAE_TINY = dict(
    block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
    norm_num_groups=32, sample_size=32,
)
VAE_DEEP = dict(
    block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=2, latent_channels=4,
    norm_num_groups=4, sample_size=16,
)
# tools/ref/clip_ref.py's quick_gelu case.
CLIP_TINY = dict(
    vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=37, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, bos_token_id=406, eos_token_id=407, pad_token_id=1,
)

# stable-diffusion-v1-5 / lllyasviel control_v11p_sd15_* configs.
UNET_SD15 = dict(
    sample_size=64, cross_attention_dim=768, attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
)
CONTROLNET_SD15 = dict(cross_attention_dim=768, attention_head_dim=8)
VAE_SD15 = dict(
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
    norm_num_groups=32, sample_size=512,
)
CLIP_SD15 = dict(
    vocab_size=49408, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
CONTROL_PREFIX = "control_model."

RES_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
            "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
RES_VAE = {"conv_shortcut": "nin_shortcut"}
ATTN_VAE = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def sub(rest, table):
    """Renames the module part of `rest` ('norm1.weight') with `table`."""
    for new, old in sorted(table.items(), key=lambda kv: -len(kv[0])):
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def encoder_to_ldm(key, cfg):
    """UNet-encoder keys (time embedding, conv_in, down blocks, mid block); None if other."""
    lpb = cfg["layers_per_block"]
    simple = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
              "conv_in.": "input_blocks.0.0."}
    for new, old in simple.items():
        if key.startswith(new):
            return old + key[len(new):]
    p = key.split(".")
    if p[0] == "down_blocks":
        b = int(p[1])
        rest = ".".join(p[4:])
        if p[2] == "resnets":
            return f"input_blocks.{1 + b * (lpb + 1) + int(p[3])}.0." + sub(rest, RES_UNET)
        if p[2] == "attentions":
            return f"input_blocks.{1 + b * (lpb + 1) + int(p[3])}.1." + rest
        if p[2] == "downsamplers":
            return f"input_blocks.{1 + b * (lpb + 1) + lpb}.0.op." + ".".join(p[5:])
    if p[0] == "mid_block":
        rest = ".".join(p[3:])
        if p[1] == "resnets":
            return f"middle_block.{2 * int(p[2])}." + sub(rest, RES_UNET)
        return "middle_block.1." + rest
    return None


def to_ldm_unet(sd, cfg):
    lpb = cfg["layers_per_block"]
    out = {}
    for key, t in sd.items():
        new = encoder_to_ldm(key, cfg)
        if new is None:
            p = key.split(".")
            if key.startswith("conv_norm_out."):
                new = "out.0." + p[-1]
            elif key.startswith("conv_out."):
                new = "out.2." + p[-1]
            elif p[0] == "up_blocks":
                i = int(p[1])
                has_attn = cfg["up_block_types"][i].startswith("CrossAttn")
                if p[2] == "resnets":
                    new = f"output_blocks.{i * (lpb + 1) + int(p[3])}.0." + sub(".".join(p[4:]), RES_UNET)
                elif p[2] == "attentions":
                    new = f"output_blocks.{i * (lpb + 1) + int(p[3])}.1." + ".".join(p[4:])
                elif p[2] == "upsamplers":
                    slot = 2 if has_attn else 1
                    new = f"output_blocks.{i * (lpb + 1) + lpb}.{slot}.conv." + p[-1]
        assert new is not None, key
        out[UNET_PREFIX + new] = t
    return out


def to_ldm_controlnet(sd, cfg):
    n_stages = len(cfg["conditioning_embedding_out_channels"])
    out = {}
    for key, t in sd.items():
        new = encoder_to_ldm(key, cfg)
        p = key.split(".")
        if new is None:
            if p[0] == "controlnet_cond_embedding":
                if p[1] == "conv_in":
                    idx = 0
                elif p[1] == "conv_out":
                    idx = 2 * (2 * (n_stages - 1) + 1)
                else:
                    idx = 2 * (int(p[2]) + 1)
                new = f"input_hint_block.{idx}." + p[-1]
            elif p[0] == "controlnet_down_blocks":
                new = f"zero_convs.{p[1]}.0." + p[-1]
            elif p[0] == "controlnet_mid_block":
                new = "middle_block_out.0." + p[-1]
        assert new is not None, key
        out[CONTROL_PREFIX + new] = t
    return out


def to_ldm_vae(sd, cfg):
    levels = len(cfg["block_out_channels"])
    out = {}
    for key, t in sd.items():
        p = key.split(".")
        side = p[0]
        new = None
        if p[1] in ("conv_in", "conv_out") or p[0] in ("quant_conv", "post_quant_conv"):
            new = key
        elif p[1] == "conv_norm_out":
            new = f"{side}.norm_out." + p[-1]
        elif p[1] == "mid_block":
            rest = ".".join(p[4:])
            if p[2] == "resnets":
                new = f"{side}.mid.block_{int(p[3]) + 1}." + sub(rest, RES_VAE)
            else:
                new = f"{side}.mid.attn_1." + sub(rest, ATTN_VAE)
                if t.ndim == 2:  # linear -> 1x1 conv, as the original AttnBlock stores it
                    t = t.reshape(*t.shape, 1, 1)
        elif p[1] == "down_blocks":
            if p[3] == "resnets":
                new = f"encoder.down.{p[2]}.block.{p[4]}." + sub(".".join(p[5:]), RES_VAE)
            else:
                new = f"encoder.down.{p[2]}.downsample.conv." + p[-1]
        elif p[1] == "up_blocks":
            l = levels - 1 - int(p[2])
            if p[3] == "resnets":
                new = f"decoder.up.{l}.block.{p[4]}." + sub(".".join(p[5:]), RES_VAE)
            else:
                new = f"decoder.up.{l}.upsample.conv." + p[-1]
        assert new is not None, key
        out[VAE_PREFIX + new] = t
    return out


def to_ldm_clip(sd, cfg):
    return {CLIP_PREFIX + k: t for k, t in sd.items()}


def check(case, sd, ldm, back, bitwise):
    """diffusers' converter must give back exactly the diffusers keys and tensors."""
    assert set(back) == set(sd), (case, sorted(set(back) ^ set(sd))[:10])
    assert len(ldm) == len(sd), case
    for k, t in sd.items():
        assert back[k].shape == t.shape, (case, k, back[k].shape, t.shape)
        if bitwise:
            assert torch.equal(back[k], t), (case, k)


def pairs_by_tags(case, ldm, sd):
    """Pairs each LDM key with the diffusers key diffusers' converter moves it to, by
    converting a checkpoint whose tensors are tagged with their key's index."""
    # Keep ranks so that the VAE's conv->linear reshape still applies.
    tagged = {k: torch.full([1] * ldm[k].ndim, float(i)) for i, k in enumerate(ldm)}
    names = list(ldm)
    conv = CONVERTERS[case.split("_")[0]]
    converted = conv(tagged, case)
    assert set(converted) == set(sd), case
    pairs = []
    for dk, t in converted.items():
        lk = names[int(t.reshape(-1)[0].item())]
        pairs.append([lk, dk, list(ldm[lk].shape)])
    pairs.sort()
    return pairs


CONFIGS = {}


def conv_unet(ckpt, case):
    return convert_ldm_unet_checkpoint(ckpt, CONFIGS[case])


def conv_controlnet(ckpt, case):
    return convert_controlnet_checkpoint(ckpt, CONFIGS[case])


def conv_vae(ckpt, case):
    return convert_ldm_vae_checkpoint(ckpt, CONFIGS[case])


def conv_clip(ckpt, case):
    return convert_ldm_clip_checkpoint(ckpt)


CONVERTERS = {"unet": conv_unet, "controlnet": conv_controlnet, "vae": conv_vae, "clip": conv_clip}
TO_LDM = {"unet": to_ldm_unet, "controlnet": to_ldm_controlnet, "vae": to_ldm_vae, "clip": to_ldm_clip}


def run_case(case, sd, config, bitwise):
    kind = case.split("_")[0]
    CONFIGS[case] = config
    ldm = TO_LDM[kind]({k: v for k, v in sd.items()}, config)
    back = CONVERTERS[kind](dict(ldm), case)
    check(case, sd, ldm, back, bitwise)
    pairs = pairs_by_tags(case, ldm, sd)
    print(f"{case}: {len(pairs)} keys; diffusers' converter restores them"
          + (" bitwise" if bitwise else " (keys and shapes)"))
    return pairs


def fixture(name, prefix=""):
    sd = load_file(os.path.join(FIXTURES, name))
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def main():
    maps, configs = {}, {}

    unet = UNet2DConditionModel(**UNET_TINY)
    sd = fixture("unet_tiny.safetensors")
    assert set(sd) == set(unet.state_dict()), "unet_tiny fixture keys"
    maps["unet_tiny"] = run_case("unet_tiny", sd, dict(unet.config), True)
    configs["unet_tiny"] = unet.to_json_string()

    cn = ControlNetModel(**CONTROLNET_TINY)
    sd = fixture("controlnet_tiny.safetensors")
    assert set(sd) == set(cn.state_dict()), "controlnet_tiny fixture keys"
    maps["controlnet_tiny"] = run_case("controlnet_tiny", sd, dict(cn.config), True)
    configs["controlnet_tiny"] = cn.to_json_string()

    for name, cfg in (("tiny", VAE_TINY), ("deep", VAE_DEEP)):
        vae = AutoencoderKL(**cfg)
        sd = fixture("vae_tiny.safetensors", f"{name}.")
        sd = {k: v for k, v in sd.items() if "/" not in k}
        assert set(sd) == set(vae.state_dict()), f"vae {name} fixture keys"
        maps[f"vae_{name}"] = run_case(f"vae_{name}", sd, dict(vae.config), True)
        configs[f"vae_{name}"] = vae.to_json_string()

    clip_cfg = CLIPTextConfig(**CLIP_TINY)
    clip = CLIPTextModel(clip_cfg)
    sd = fixture("clip_quick_gelu.safetensors")
    sd = {k: v for k, v in sd.items() if k.startswith("text_model.")}
    expected = {k if k.startswith("text_model.") else "text_model." + k
                for k in clip.state_dict()}
    assert set(sd) == expected - {"text_model.embeddings.position_ids"}, "clip fixture keys"
    maps["clip_tiny"] = run_case("clip_tiny", sd, {}, True)
    configs["clip_tiny"] = clip_cfg.to_json_string()

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_SD15)
        cn = ControlNetModel(**CONTROLNET_SD15)
        vae = AutoencoderKL(**VAE_SD15)
        clip_cfg = CLIPTextConfig(**CLIP_SD15)
        clip = CLIPTextModel(clip_cfg)
    maps["unet_sd15"] = run_case("unet_sd15", unet.state_dict(), dict(unet.config), False)
    maps["controlnet_sd15"] = run_case("controlnet_sd15", cn.state_dict(), dict(cn.config), False)
    maps["vae_sd15"] = run_case("vae_sd15", vae.state_dict(), dict(vae.config), False)
    clip_sd = {(k if k.startswith("text_model.") else "text_model." + k): v
               for k, v in clip.state_dict().items()}
    maps["clip_sd15"] = run_case("clip_sd15", clip_sd, {}, False)
    configs["unet_sd15"] = unet.to_json_string()
    configs["controlnet_sd15"] = cn.to_json_string()
    configs["vae_sd15"] = vae.to_json_string()
    configs["clip_sd15"] = clip_cfg.to_json_string()

    path = os.path.join(FIXTURES, "weights_ref.json")
    with open(path, "w") as f:
        json.dump({"maps": maps, "configs": configs}, f, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
