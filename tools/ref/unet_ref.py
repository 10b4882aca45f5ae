#!/usr/bin/env python3
"""Golden UNet2DConditionModel / ControlNetModel outputs from diffusers, for easel's parity tests.

Writes, into crates/easel-diffusion/tests/fixtures/:
  unet_tiny.safetensors        the tiny UNet's state dict (exact diffusers keys)
  controlnet_tiny.safetensors  the tiny ControlNet's state dict (exact diffusers keys)
  unet_cases.safetensors       inputs and outputs of every case (keys below)
read by crates/easel-diffusion/tests/unet_parity.rs and controlnet_parity.rs.

Everything runs on CPU in float32 with torch.manual_seed(0). Both models use the
configs of easel's `UNet2DConditionModelConfig::tiny()` / `ControlNetConfig::tiny()`.
Every parameter is perturbed with N(0, 0.05) noise after construction, so that
zero-initialised layers (the ControlNet's zero convs) and the default norm
weights (ones / zeros) carry information.

Per-layer-group contexts: diffusers feeds one `encoder_hidden_states` to every
cross-attention transformer. To reproduce easel's routing (one context per
group of cross-attention layers), forward pre-hooks on each Transformer2DModel,
in forward order (down blocks, mid block, up blocks), swap in the layer's own
context. Layer i belongs to group:
  single:        0
  down_mid_up:   0 for down-block layers, 1 for the mid block, 2 for up blocks
  per_layer:     i

Keys of unet_cases.safetensors (float32; timesteps float32 [B]):
  <case>/sample, <case>/timestep, <case>/context.<k> (one per group),
  <case>/out (UNet output) or, for ControlNet cases, <case>/cond,
  <case>/down.<i>, <case>/mid (residuals);
  UNet cases with residual inputs add <case>/res_down.<i>, <case>/res_mid.
  grad/... : sample, timestep, cond, target, context.<k> (down_mid_up),
             grad.<k> = d loss / d context.<k> where
             loss = mse(unet(x, t, ctx, controlnet(x, t, ctx, cond, 0.7)), target).

Usage: /work/venv/bin/python tools/ref/unet_ref.py
"""

import torch
import torch.nn.functional as F

from diffusers import ControlNetModel, UNet2DConditionModel

from _common import save_fixture


# Mirrors UNet2DConditionModelConfig::tiny().
UNET_TINY = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 32),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16,
    attention_head_dim=4,
    norm_num_groups=8,
    flip_sin_to_cos=True,
    freq_shift=0,
    use_linear_projection=False,
)

# Mirrors ControlNetConfig::tiny().
CONTROLNET_TINY = dict(
    in_channels=4,
    conditioning_channels=3,
    block_out_channels=(16, 32),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    cross_attention_dim=16,
    attention_head_dim=4,
    norm_num_groups=8,
    flip_sin_to_cos=True,
    freq_shift=0,
    use_linear_projection=False,
    conditioning_embedding_out_channels=(4, 8, 8, 16),
)

BATCH = 2
SEQ = 77
DIM = 16


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def cross_attention_layers(model):
    """The Transformer2DModels in forward order (down, mid, up)."""
    layers = []
    for block in model.down_blocks:
        layers += list(getattr(block, "attentions", None) or [])
    if model.mid_block is not None:
        layers += list(model.mid_block.attentions)
    for block in getattr(model, "up_blocks", []):
        layers += list(getattr(block, "attentions", None) or [])
    return layers


def group_of(layout, grouping, i):
    down, mid, _up = layout
    if grouping == "single":
        return 0
    if grouping == "down_mid_up":
        return 0 if i < down else (1 if i < down + mid else 2)
    return i


class Routed:
    """Hooks each cross-attention transformer to take its group's context."""

    def __init__(self, model, layout, grouping, contexts):
        self.layers = cross_attention_layers(model)
        self.handles = []
        self.calls = 0
        for i, layer in enumerate(self.layers):
            ctx = contexts[group_of(layout, grouping, i)]

            def hook(module, args, kwargs, ctx=ctx):
                self.calls += 1
                kwargs = dict(kwargs)
                kwargs["encoder_hidden_states"] = ctx
                return args, kwargs

            self.handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        assert self.calls == len(self.layers), (self.calls, len(self.layers))


def layout_of(unet):
    down = sum(len(getattr(b, "attentions", None) or []) for b in unet.down_blocks)
    mid = len(unet.mid_block.attentions)
    up = sum(len(getattr(b, "attentions", None) or []) for b in unet.up_blocks)
    return down, mid, up


def n_contexts(layout, grouping):
    return {"single": 1, "down_mid_up": 3, "per_layer": sum(layout)}[grouping]


def main():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_TINY).eval()
    perturb(unet)
    controlnet = ControlNetModel(**CONTROLNET_TINY).eval()
    perturb(controlnet)
    layout = layout_of(unet)
    assert layout == (2, 1, 3), layout

    cases = {}

    def contexts(grouping, batch=BATCH):
        return [torch.randn(batch, SEQ, DIM) for _ in range(n_contexts(layout, grouping))]

    def run_unet(name, grouping, sample, timestep, residuals=None):
        ctxs = contexts(grouping, sample.shape[0])
        kwargs = {}
        if residuals is not None:
            down, mid = residuals
            kwargs = dict(down_block_additional_residuals=list(down), mid_block_additional_residual=mid)
            for i, r in enumerate(down):
                cases[f"{name}/res_down.{i}"] = r
            cases[f"{name}/res_mid"] = mid
        with torch.no_grad(), Routed(unet, layout, grouping, ctxs):
            # The hooks replace this placeholder in every layer.
            out = unet(sample, timestep, encoder_hidden_states=ctxs[0], **kwargs).sample
        cases[f"{name}/sample"] = sample
        cases[f"{name}/timestep"] = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
        for k, c in enumerate(ctxs):
            cases[f"{name}/context.{k}"] = c
        cases[f"{name}/out"] = out

    x = lambda *shape: torch.randn(*shape)  # noqa: E731
    run_unet("unet_single", "single", x(BATCH, 4, 8, 8), 37.0)
    run_unet("unet_single_per_sample_t", "single", x(BATCH, 4, 8, 8), torch.tensor([10.0, 901.0]))
    run_unet("unet_down_mid_up", "down_mid_up", x(BATCH, 4, 8, 8), 500.0)
    run_unet("unet_per_layer", "per_layer", x(BATCH, 4, 8, 8), 999.0)
    run_unet("unet_odd_size", "single", x(1, 4, 6, 5), 250.0)

    # Residual shapes: the skip connections (conv_in output, each resnet and downsampler).
    down_shapes = [(BATCH, 16, 8, 8)] * 3 + [(BATCH, 16, 4, 4)] + [(BATCH, 32, 4, 4)] * 2
    residuals = ([x(*s) for s in down_shapes], x(BATCH, 32, 4, 4))
    run_unet("unet_residuals", "per_layer", x(BATCH, 4, 8, 8), 123.0, residuals)

    def run_controlnet(name, grouping, scale, guess_mode, global_pool=False):
        sample = x(BATCH, 4, 8, 8)
        cond = torch.rand(BATCH, 3, 64, 64)
        ctxs = contexts(grouping)
        controlnet.register_to_config(global_pool_conditions=global_pool)
        with torch.no_grad(), Routed(controlnet, layout[:2] + (0,), grouping, ctxs):
            down, mid = controlnet(
                sample,
                321.0,
                encoder_hidden_states=ctxs[0],
                controlnet_cond=cond,
                conditioning_scale=scale,
                guess_mode=guess_mode,
                return_dict=False,
            )
        controlnet.register_to_config(global_pool_conditions=False)
        cases[f"{name}/sample"] = sample
        cases[f"{name}/timestep"] = torch.tensor([321.0])
        cases[f"{name}/cond"] = cond
        for k, c in enumerate(ctxs):
            cases[f"{name}/context.{k}"] = c
        for i, r in enumerate(down):
            cases[f"{name}/down.{i}"] = r
        cases[f"{name}/mid"] = mid

    run_controlnet("controlnet_single", "single", 0.7, False)
    run_controlnet("controlnet_guess", "single", 0.7, True)
    run_controlnet("controlnet_down_mid_up", "down_mid_up", 0.7, False)
    # The ControlNet only has the down and mid layers: per-layer contexts for the
    # whole UNet (6 here), of which it uses the first down + mid (3).
    run_controlnet("controlnet_per_layer", "per_layer", 0.7, False)
    run_controlnet("controlnet_global_pool", "single", 0.7, True, global_pool=True)

    # Gradient of an MSE loss through ControlNet and UNet w.r.t. the contexts.
    sample = x(BATCH, 4, 8, 8)
    cond = torch.rand(BATCH, 3, 64, 64)
    target = x(BATCH, 4, 8, 8)
    ctxs = [c.requires_grad_(True) for c in contexts("down_mid_up")]
    with Routed(controlnet, layout[:2] + (0,), "down_mid_up", ctxs):
        down, mid = controlnet(
            sample, 600.0, encoder_hidden_states=ctxs[0], controlnet_cond=cond,
            conditioning_scale=0.7, return_dict=False,
        )
    with Routed(unet, layout, "down_mid_up", ctxs):
        out = unet(
            sample, 600.0, encoder_hidden_states=ctxs[0],
            down_block_additional_residuals=list(down), mid_block_additional_residual=mid,
        ).sample
    loss = F.mse_loss(out, target)
    loss.backward()
    cases["grad/sample"] = sample
    cases["grad/timestep"] = torch.tensor([600.0])
    cases["grad/cond"] = cond
    cases["grad/target"] = target
    cases["grad/loss"] = loss.detach().reshape(1)
    for k, c in enumerate(ctxs):
        cases[f"grad/context.{k}"] = c.detach()
        cases[f"grad/grad.{k}"] = c.grad

    save_fixture({k: v.float() for k, v in cases.items()}, "unet_cases.safetensors")
    save_fixture(unet.state_dict(), "unet_tiny.safetensors")
    save_fixture(controlnet.state_dict(), "controlnet_tiny.safetensors")


if __name__ == "__main__":
    main()
