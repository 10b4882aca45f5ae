#!/usr/bin/env python3
"""Full-scale (SD1.5-sized) random-weight parity reference for easel's UNet, ControlNet and CLIP.

    /work/venv/bin/python tools/ref/sd15_parity.py --out DIR [--dtype fp16|fp32]
        [--device cpu|cuda] [--tiny] [--seed 0]

Builds, from config dicts written below (no hub access), diffusers 0.42.1
`UNet2DConditionModel` and `ControlNetModel` and transformers `CLIPTextModel` with the SD1.5
architectures (`--tiny`: the small test configs of easel's `tiny()` presets, for a quick check),
random weights under `torch.manual_seed(seed)` on the CPU in f32: PyTorch's default init, then
every norm's scale and shift and the ControlNet's zero-initialised convs (`controlnet_down_blocks`,
`controlnet_mid_block`, `controlnet_cond_embedding.conv_out`) randomized too, so that every tensor
matters. Writes DIR in diffusers' folder layout (`save_pretrained`, safetensors, weights in
`--dtype`):

    DIR/unet/{config.json, diffusion_pytorch_model.safetensors}
    DIR/controlnet/{config.json, diffusion_pytorch_model.safetensors}
    DIR/text_encoder/{config.json, model.safetensors}
    DIR/reference.safetensors

`reference.safetensors` holds the inputs (f32, generated on the CPU): `sample` [2, 4, 64, 64]
(tiny: [2, 4, 16, 16]), `timestep` [1] = 500, `context` [2, 77, 768] (tiny: [2, 77, 16]), `cond`
[2, 3, 512, 512] in [0, 1] (tiny: [2, 3, 128, 128]), `ids` [2, 77] (i64, bos, random words,
eos-padded); and the outputs computed by diffusers / transformers in `--dtype` on `--device`
(stored in that dtype): `controlnet.down.{0..11}`, `controlnet.mid` (ControlNet residuals,
conditioning scale 1.0), `unet` (the noise prediction with those residuals added), `clip` (CLIP
`last_hidden_state` of `ids`). With `--dtype fp16` the same outputs computed in f32 (from the same
f16-rounded weights, TF32 off) are added as `f32/<name>`: the reference's own f16 error is then
known. `meta` (JSON string in the safetensors metadata) records versions, dtype, device, timings.

Read by `cargo run --release -p easel-diffusion --example sd15_parity -- --dir DIR ...`.
See docs/gpu.md.
"""
import argparse
import json
import os
import time

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

import diffusers
from diffusers import ControlNetModel, UNet2DConditionModel

ENCODER_SD15 = dict(
    in_channels=4,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
    use_linear_projection=False,
)
UNET_SD15 = dict(
    ENCODER_SD15,
    sample_size=64,
    out_channels=4,
    center_input_sample=False,
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
CONTROLNET_SD15 = dict(
    ENCODER_SD15,
    conditioning_channels=3,
    controlnet_conditioning_channel_order="rgb",
    conditioning_embedding_out_channels=(16, 32, 96, 256),
    global_pool_conditions=False,
)
# openai/clip-vit-large-patch14's text tower as SD1.5's text_encoder/config.json has it.
CLIP_SD15 = dict(
    vocab_size=49408, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)

# easel's UNet2DConditionModelConfig::tiny() / ControlNetConfig::tiny() / ClipTextConfig::tiny().
TINY_ENCODER = dict(
    ENCODER_SD15,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    block_out_channels=(16, 32),
    norm_num_groups=8,
    cross_attention_dim=16,
    attention_head_dim=4,
)
UNET_TINY = dict(UNET_SD15, **TINY_ENCODER, sample_size=8,
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
CONTROLNET_TINY = dict(CONTROLNET_SD15, **TINY_ENCODER,
                       conditioning_embedding_out_channels=(4, 8, 8, 16))
CLIP_TINY = dict(CLIP_SD15, vocab_size=1000, hidden_size=16, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=37)

BOS, EOS = 49406, 49407  # the SD1.5 tokenizer's ids (tiny: 998, 999)
TIMESTEP = 500.0
BATCH = 2


def randomize(model):
    """Random norm affines and non-zero zero-convs (PyTorch's default init elsewhere)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if module.weight is not None:
                    module.weight.copy_(1.0 + 0.1 * torch.randn_like(module.weight))
                    module.bias.copy_(0.05 * torch.randn_like(module.bias))
            zero_init = (name.startswith("controlnet_down_blocks.")
                         or name == "controlnet_mid_block"
                         or name == "controlnet_cond_embedding.conv_out")
            if zero_init and isinstance(module, torch.nn.Conv2d):
                module.reset_parameters()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["fp16", "fp32"], default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    timings = {}

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.tiny:
        unet_cfg, cn_cfg, clip_cfg, latent, bos, eos = (
            UNET_TINY, CONTROLNET_TINY, CLIP_TINY, 16, 998, 999)
    else:
        unet_cfg, cn_cfg, clip_cfg, latent, bos, eos = (
            UNET_SD15, CONTROLNET_SD15, CLIP_SD15, 64, BOS, EOS)
    unet = UNet2DConditionModel(**unet_cfg).eval()
    randomize(unet)
    controlnet = ControlNetModel(**cn_cfg).eval()
    randomize(controlnet)
    text_cfg = CLIPTextConfig(**clip_cfg)
    text_cfg._attn_implementation = "eager"
    clip = CLIPTextModel(text_cfg).eval()
    randomize(clip)
    timings["init_s"] = time.perf_counter() - t0

    # Inputs, generated on the CPU in f32 so that every device and dtype sees the same values.
    d = unet_cfg["cross_attention_dim"]
    inputs = {
        "sample": torch.randn(BATCH, 4, latent, latent),
        "timestep": torch.tensor([TIMESTEP]),
        "context": torch.randn(BATCH, 77, d),
        "cond": torch.rand(BATCH, 3, 8 * latent, 8 * latent),
    }
    words = torch.randint(0, min(eos - 1, clip_cfg["vocab_size"]), (BATCH, 20))
    ids = torch.full((BATCH, 77), eos, dtype=torch.int64)
    ids[:, 0] = bos
    ids[0, 1:21] = words[0]
    ids[1, 1:13] = words[1, :12]
    inputs["ids"] = ids

    t0 = time.perf_counter()
    for model in (unet, controlnet, clip):
        model.to(dtype)
    os.makedirs(args.out, exist_ok=True)
    unet.save_pretrained(os.path.join(args.out, "unet"), safe_serialization=True)
    controlnet.save_pretrained(os.path.join(args.out, "controlnet"), safe_serialization=True)
    clip.save_pretrained(os.path.join(args.out, "text_encoder"), safe_serialization=True)
    timings["save_s"] = time.perf_counter() - t0

    def run(run_dtype):
        for model in (unet, controlnet, clip):
            model.to(device=device, dtype=run_dtype)
        x = {k: v.to(device=device, dtype=run_dtype) if v.is_floating_point() else v.to(device)
             for k, v in inputs.items()}
        with torch.no_grad():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            down, mid = controlnet(
                x["sample"], TIMESTEP, encoder_hidden_states=x["context"],
                controlnet_cond=x["cond"], conditioning_scale=1.0, return_dict=False)
            out = unet(x["sample"], TIMESTEP, encoder_hidden_states=x["context"],
                       down_block_additional_residuals=list(down),
                       mid_block_additional_residual=mid).sample
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            text = clip(input_ids=x["ids"]).last_hidden_state
        outputs = {f"controlnet.down.{i}": r for i, r in enumerate(down)}
        outputs.update({"controlnet.mid": mid, "unet": out, "clip": text})
        return {k: v.detach().cpu().contiguous() for k, v in outputs.items()}, elapsed

    tensors = {k: v.contiguous() for k, v in inputs.items()}
    if dtype != torch.float32:
        f32, timings["first_forward_f32_s"] = run(torch.float32)
        tensors.update({f"f32/{k}": v for k, v in f32.items()})
    outputs, timings["first_forward_s"] = run(dtype)
    tensors.update(outputs)
    for k, v in outputs.items():
        if not torch.isfinite(v.float()).all():
            raise SystemExit(f"reference output {k} is not finite in {args.dtype}")

    meta = {
        "tiny": args.tiny, "dtype": args.dtype, "device": str(device), "seed": args.seed,
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "max_abs": {k: float(v.float().abs().max()) for k, v in outputs.items()},
    }
    save_file(tensors, os.path.join(args.out, "reference.safetensors"),
              metadata={"meta": json.dumps(meta)})
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
