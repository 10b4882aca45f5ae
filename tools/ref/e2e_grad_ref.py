#!/usr/bin/env python3
"""End-to-end gradient reference: placeholder vectors -> CLIP -> ControlNet + UNet -> ε-MSE.

Run from the repository root (CPU, no network needed):

    /work/venv/bin/python tools/ref/e2e_grad_ref.py

This is one inversion step of a prompt bank, computed by transformers 5.23 / diffusers 0.42.1
autograd on tiny random models (f32, `torch.manual_seed(0)`):

- a tiny `CLIPTextModel` (vocabulary 64, width 16 = the UNet's cross-attention width, 2 layers
  of 4 heads, 77 positions, quick_gelu, eos id 63); a tiny `UNet2DConditionModel` and
  `ControlNetModel` (the configs of easel's `UNet2DConditionModelConfig::tiny()` /
  `ControlNetConfig::tiny()`); every parameter randomized so that nothing is an identity or a
  zero map.
- two prompts (batch 2), `bos, words..., <ph>, <ph>, words..., eos, pad...` padded with eos to
  77 ids. `<ph>` = 64 is an added token (outside the 64-row vocabulary): transformers looks it up
  as id 0 and a forward hook on `embeddings.token_embedding` swaps in the group's vectors at
  the placeholder positions (the k-th id of each run takes `vectors[k]`), the same math as
  feeding `inputs_embeds`.
- three groups (easel's `LayerGroups::DownMidUp`: down-block, mid-block and up-block
  cross-attention layers), each with its own 2 placeholder vectors: group g runs CLIP on the
  ids with vectors `v.{2g}`, `v.{2g+1}` and its `last_hidden_state` becomes the context of its
  layers in both the ControlNet (down, mid) and the UNet (down, mid, up), via forward
  pre-hooks on each `Transformer2DModel` (as `tools/ref/unet_ref.py` does). A 7th vector `v.6`
  exists in the bank but no group uses it.
- `x_t = DDIMScheduler(SD1.5 schedule).add_noise(x0, eps, t)` at t = 601,
  residuals = controlnet(x_t, t, contexts, cond, conditioning_scale 0.8),
  `loss = mse(unet(x_t, t, contexts, residuals), eps)`, and `d loss / d v.k` for k < 6.

Writes `crates/easel-diffusion/tests/fixtures/`:

- `e2e_grad_models.safetensors`: weights under their exact state-dict keys, prefixed
  `clip.` (transformers 5.x keys, no `text_model.`), `unet.` and `controlnet.`;
- `e2e_grad_cases.safetensors`: `ids` [2, 77] (i64, with the placeholder id), `v.0`..`v.6`
  [16], `x0`, `eps` [2, 4, 8, 8], `cond` [2, 3, 64, 64], `x_t`, `context.{0,1,2}` [2, 77, 16],
  `unet_out` [2, 4, 8, 8], `loss` [1], `grad.0`..`grad.5` [16], and `config` (F64):
  vocab, hidden, layers, heads, intermediate, max positions, eos id, placeholder id,
  timestep, conditioning scale.

Read by `crates/easel-diffusion/tests/end_to_end_gradients.rs`.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from diffusers import ControlNetModel, DDIMScheduler, UNet2DConditionModel

OUT = Path(__file__).resolve().parents[2] / "crates/easel-diffusion/tests/fixtures"

VOCAB, BOS, EOS = 64, 62, 63
PLACEHOLDER = VOCAB  # an added token, outside the base vocabulary
SEQ, DIM = 77, 16
N_VECTORS, GROUPS = 2, 3
TIMESTEP = 601
CONDITIONING_SCALE = 0.8

# Mirrors UNet2DConditionModelConfig::tiny().
UNET_TINY = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
    layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=DIM,
    attention_head_dim=4, norm_num_groups=8, flip_sin_to_cos=True, freq_shift=0,
    use_linear_projection=False,
)
# Mirrors ControlNetConfig::tiny().
CONTROLNET_TINY = dict(
    in_channels=4, conditioning_channels=3, block_out_channels=(16, 32), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=DIM,
    attention_head_dim=4, norm_num_groups=8, flip_sin_to_cos=True, freq_shift=0,
    use_linear_projection=False, conditioning_embedding_out_channels=(4, 8, 8, 16),
)
# SD1.5's scheduler_config.json.
SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)


def randomize_clip(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "embedding" in name:
                p.copy_(0.7 * torch.randn_like(p))
            else:  # linear weights [out, in]
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)


def perturb(model):
    """Adds N(0, 0.05) noise so zero-initialised layers (zero convs) carry information."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def cross_attention_layers(model):
    """The Transformer2DModels in forward order (down, mid, up)."""
    layers = []
    for block in model.down_blocks:
        layers += list(getattr(block, "attentions", None) or [])
    mid = len(model.mid_block.attentions)
    layers += list(model.mid_block.attentions)
    up = 0
    for block in getattr(model, "up_blocks", []):
        attns = list(getattr(block, "attentions", None) or [])
        up += len(attns)
        layers += attns
    return layers, len(layers) - mid - up, mid


class Routed:
    """Hooks each cross-attention layer to take its DownMidUp group's context."""

    def __init__(self, model, contexts):
        layers, down, mid = cross_attention_layers(model)
        self.handles = []
        for i, layer in enumerate(layers):
            ctx = contexts[0 if i < down else (1 if i < down + mid else 2)]

            def hook(_module, args, kwargs, ctx=ctx):
                kwargs = dict(kwargs)
                kwargs["encoder_hidden_states"] = ctx
                return args, kwargs

            self.handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def prompt(words):
    ids = [BOS] + words + [EOS]
    return ids + [EOS] * (SEQ - len(ids))


def encode(clip, ids, vectors):
    """CLIP last_hidden_state with each run of the placeholder taking `vectors` in order."""
    mask = ids == PLACEHOLDER
    index = torch.zeros_like(ids)
    for b in range(ids.shape[0]):
        run = 0
        for t in range(ids.shape[1]):
            index[b, t] = run % N_VECTORS if mask[b, t] else 0
            run = run + 1 if mask[b, t] else 0

    def hook(_module, _inputs, output):
        return torch.where(mask[..., None], vectors[index], output)

    handle = clip.embeddings.token_embedding.register_forward_hook(hook)
    out = clip(input_ids=torch.where(mask, torch.zeros_like(ids), ids)).last_hidden_state
    handle.remove()
    return out


def main():
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=SEQ, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS,
    )
    cfg._attn_implementation = "eager"
    clip = CLIPTextModel(cfg).eval()
    randomize_clip(clip)
    unet = UNet2DConditionModel(**UNET_TINY).eval()
    perturb(unet)
    controlnet = ControlNetModel(**CONTROLNET_TINY).eval()
    perturb(controlnet)
    for model in (clip, unet, controlnet):
        model.requires_grad_(False)

    ids = torch.tensor([
        prompt([5, 17, 30, PLACEHOLDER, PLACEHOLDER, 41]),
        prompt([9, PLACEHOLDER, PLACEHOLDER, 22, 3, 58, 11]),
    ])
    bank = [(0.7 * torch.randn(DIM)).requires_grad_(True) for _ in range(GROUPS * N_VECTORS + 1)]
    x0 = torch.randn(2, 4, 8, 8)
    eps = torch.randn(2, 4, 8, 8)
    cond = torch.rand(2, 3, 64, 64)
    scheduler = DDIMScheduler(**SCHEDULER)
    x_t = scheduler.add_noise(x0, eps, torch.tensor([TIMESTEP]))

    contexts = [
        encode(clip, ids, torch.stack(bank[N_VECTORS * g:N_VECTORS * (g + 1)]))
        for g in range(GROUPS)
    ]
    t = float(TIMESTEP)
    with Routed(controlnet, contexts):
        down, mid = controlnet(
            x_t, t, encoder_hidden_states=contexts[0], controlnet_cond=cond,
            conditioning_scale=CONDITIONING_SCALE, return_dict=False,
        )
    with Routed(unet, contexts):
        out = unet(
            x_t, t, encoder_hidden_states=contexts[0],
            down_block_additional_residuals=list(down), mid_block_additional_residual=mid,
        ).sample
    loss = F.mse_loss(out, eps)
    used = bank[:GROUPS * N_VECTORS]
    grads = torch.autograd.grad(loss, used)

    weights = {}
    for prefix, model in (("clip", clip), ("unet", unet), ("controlnet", controlnet)):
        weights.update({f"{prefix}.{k}": v.contiguous() for k, v in model.state_dict().items()})
    cases = {
        "ids": ids, "x0": x0, "eps": eps, "cond": cond, "x_t": x_t,
        "unet_out": out, "loss": loss.reshape(1),
        "config": torch.tensor([
            VOCAB, DIM, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            SEQ, EOS, PLACEHOLDER, TIMESTEP, CONDITIONING_SCALE,
        ], dtype=torch.float64),
    }
    cases.update({f"v.{k}": v for k, v in enumerate(bank)})
    cases.update({f"context.{g}": c for g, c in enumerate(contexts)})
    cases.update({f"grad.{k}": g for k, g in enumerate(grads)})

    OUT.mkdir(parents=True, exist_ok=True)
    for name, tensors in (("e2e_grad_models", weights), ("e2e_grad_cases", cases)):
        path = OUT / f"{name}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))
        print(f"{path.name}: {path.stat().st_size} bytes")
    print(f"loss {loss.item():.6f}; |grad| per vector "
          + " ".join(f"{g.abs().max().item():.3e}" for g in grads))


if __name__ == "__main__":
    main()
