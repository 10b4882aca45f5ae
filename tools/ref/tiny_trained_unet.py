#!/usr/bin/env python3
"""A tiny SD 1.x UNet trained so that its ε-prediction on the `learn` test collection depends on
the text context, for the loss-drop test of crates/easel-bank/tests/train.rs.

The tiny random SD of crates/easel-pipeline/tests/fixtures (tiny-sd/, tiny-controlnet/, written
by pipeline_ref.py) cannot show a prompt bank learning: a random UNet's error barely depends on
its context and cannot predict ε at all (loss ≈ 1 whatever the context). This script starts from
that UNet (same config) and trains it, with the text encoder, VAE and ControlNet of the fixtures
frozen, so that

- with the *style* context — CLIP("a painting in the style of <easel-style> <easel-style>") with
  the two placeholder vectors = STYLE: "painting"'s two token embeddings ("pain", "ting") plus
  seeded N(0, STYLE_DISTANCE²) per coordinate — it denoises the collection
  (crates/easel-bank/tests/fixtures/collection, 64 px views as the Rust trainer makes them),
  and
- with any other context it is trained on a contrastive target: the same noisy latents of the
  collection, but ε plus a per-context bias (constant per latent channel, RMS BIAS). The init
  word's context (both placeholder vectors = "painting"'s token embeddings, where the test's
  bank starts) gets bias PAINTING_BIAS; the contexts on the straight line from it to the style
  context get that bias scaled down linearly to 0 (so the loss has a path to descend along),
  and the template with other vocabulary words gets their own biases.

So the ε-loss on the collection is about (model error) + (the context's bias)²: a bank learns
by moving its vectors towards contexts whose bias is 0.

Why a bias rather than other pictures: the tiny random VAE maps every picture to nearly the
same latents (channel means ≈ (−0.02, 0, 0.06, −0.05), per-element spread ≈ 0.06 around them,
whatever the picture), so noisy latents of different pictures are told apart only at the
lowest timesteps and a context-conditioned denoiser of real pictures gains almost nothing from
the right context. A first try shifting the clean latents by a per-context offset instead left
the collection's loss equal under both contexts after 200 steps (0.0428 / 0.0428): noisy
latents show an offset by themselves. A bias on the target, with the same x_t under every
context, can only be predicted from the context.

ControlNet: trained with the tiny ControlNet's residuals at scale 1 on the views' Canny edges
(cv2.Canny(view, 100, 200), easel's Canny has cv2 parity), as `learn` runs by default
(`TrainConfig::control_scale` 1, canny 100:200).

Views: the 16 views of the Rust trainer, reproduced exactly as to crop geometry
(crates/easel-bank/src/collection.rs: SplitMix64 seeded by the image's sha256, short side ×
U(1, 1.2), uniform offset, odd views mirrored) — resized with PIL's bilinear filter where Rust
uses the image crate's triangle filter, so pixels may differ by a level — plus EXTRA_VIEWS
random views per artwork of the same distribution. Latents: the VAE posterior mean × 0.18215.

Training: AdamW (lr LR, weight decay 0), STEPS steps of BATCH samples, t ~ U{0..999}, the
forward process of SD's scaled-linear schedule, MSE(ε̂, target); half the samples take the style
context, a quarter a point of the painting→style line, a quarter another word's prompt.
Seed SEED (torch.manual_seed), CPU, f32, torch 2.15, diffusers 0.42.1.

Measured in the run that wrote the committed fixture (382 s of training on 2 shared CPU cores; training
is not bit-reproducible across runs: torch's threaded reductions, a previous run gave
0.0178 / 0.2033), on the 16 exact views, 512 batches of 4 stratified timesteps, same draws:
  ε-loss with the style context 0.0182, with the init word's context 0.2098;
  a one-slot, two-vector bank learned from "painting" with Adam, batch 4, 50 steps (a proxy of
  the Rust test): lr 2e-3 first-10 mean 0.0994, last-10 0.0142 (ratio 0.143); lr 5e-3 0.208;
  lr 1e-2 0.255.
The Rust side (crates/easel-bank/tests/train.rs) measures 0.016 vs 0.203 on its own draws.

Writes crates/easel-bank/tests/fixtures/tiny-sd-trained-unet/ (config.json +
diffusion_pytorch_model.safetensors, f32, the UNet only; the test loads everything else from
tiny-sd/ and tiny-controlnet/) and, next to it, style.safetensors: `style` [2, 32] (STYLE)
and `painting` [2, 32] (the init word's token embeddings), so tests can place a bank at either
end.

Usage: /work/venv/bin/python tools/ref/tiny_trained_unet.py [--steps N] [--no-write]
(--no-write: train and measure only)
"""

import argparse
import hashlib
import json
import math
import os
import struct
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIPELINE_FIXTURES = os.path.join(ROOT, "crates/easel-pipeline/tests/fixtures")
BANK_FIXTURES = os.path.join(ROOT, "crates/easel-bank/tests/fixtures")
COLLECTION = os.path.join(BANK_FIXTURES, "collection")
OUT = os.path.join(BANK_FIXTURES, "tiny-sd-trained-unet")

RES = 64  # the test's TrainConfig::resolution
VIEWS = 4  # TrainConfig::views_per_image
CANNY = (100, 200)  # TrainConfig::canny_low, canny_high
CONTROL_SCALE = 1.0  # TrainConfig::control_scale
TEMPLATE = "a painting in the style of {}"  # prompts/lsast.toml
TOKENS = 2  # the test bank's tokens per slot
INIT_WORD = "painting"
OTHER_WORDS = ["cat", "night", "blue", "house", "tree", "water", "city", "portrait"]

SEED = 0
STEPS = 800
BATCH = 32
LR = 2e-3
EXTRA_VIEWS = 32
STYLE_DISTANCE = 0.05  # per-coordinate std of STYLE − painting
PAINTING_BIAS = 0.5  # RMS over the 4 latent channels of the init context's ε bias
BIAS = 0.5  # the same for the other words' contexts


def splitmix(seed):
    """easel's SplitMix64 (crates/easel-bank/src/train.rs): yields u64s."""
    mask = (1 << 64) - 1
    state = seed & mask
    while True:
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        yield z ^ (z >> 31)


def crop_view(img, scale, fx, fy, flip):
    """One square RES view: short side × scale, crop at fractional offsets (fx, fy) of the
    slack (Rust: below(slack + 1)), mirrored if `flip`."""
    w, h = img.size
    short = max(math.floor(RES * scale + 0.5), RES)
    if w <= h:
        nw, nh = short, max(-(-h * short // w), RES)
    else:
        nw, nh = max(-(-w * short // h), RES), short
    resized = img.resize((nw, nh), Image.BILINEAR)
    x, y = fx(nw - RES + 1), fy(nh - RES + 1)
    view = resized.crop((x, y, x + RES, y + RES))
    return view.transpose(Image.FLIP_LEFT_RIGHT) if flip else view


def rust_views(img):
    """The VIEWS views `crop_views` makes (crates/easel-bank/src/collection.rs)."""
    raw = np.asarray(img, dtype=np.uint8).tobytes()
    w, h = img.size
    digest = hashlib.sha256(struct.pack("<II", w, h) + raw).digest()
    rng = splitmix(struct.unpack("<Q", digest[:8])[0])
    unit = lambda: (next(rng) >> 11) / float(1 << 53)
    below = lambda n: (next(rng) * n) >> 64
    views = []
    for k in range(VIEWS):
        scale = 1.0 + 0.2 * unit()
        views.append(crop_view(img, scale, below, below, k % 2 == 1))
    return views


def random_views(img, n, gen):
    """`n` views of the same distribution from a torch generator."""
    out = []
    for k in range(n):
        u = torch.rand(3, generator=gen).tolist()
        below = lambda m, u=u: min(int(u[1] * m), m - 1)
        below_y = lambda m, u=u: min(int(u[2] * m), m - 1)
        out.append(crop_view(img, 1.0 + 0.2 * u[0], below, below_y, k % 2 == 1))
    return out


def encode(vae, views):
    """Scaled posterior-mean latents [n, 4, 8, 8] and control images [n, 3, 64, 64]."""
    arr = np.stack([np.asarray(v, dtype=np.uint8) for v in views])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        lat = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
    edges = np.stack([cv2.Canny(a, *CANNY) for a in arr]).astype(np.float32) / 255.0
    control = torch.from_numpy(edges)[:, None].expand(-1, 3, -1, -1).contiguous()
    return lat, control


class Contexts:
    """CLIP contexts of the template with the placeholder positions set to given vectors."""

    def __init__(self, tokenizer, text_encoder):
        self.te = text_encoder
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer.name_or_path)
        tokenizer.add_tokens(["<easel-style>"])
        ph = tokenizer.convert_tokens_to_ids("<easel-style>")
        prompt = TEMPLATE.format(" ".join(["<easel-style>"] * TOKENS))
        ids = tokenizer(prompt, padding="max_length", max_length=77).input_ids
        self.positions = [i for i, v in enumerate(ids) if v == ph]
        assert len(self.positions) == TOKENS, ids
        # The placeholder id is outside the encoder's table: look up any id, then overwrite.
        self.ids = torch.tensor([[0 if v == ph else v for v in ids]])
        self.tokenizer = tokenizer
        self.vectors = None
        text_encoder.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, out):
        if self.vectors is None:
            return out
        out = out.clone()
        out[:, self.positions] = self.vectors.to(out.dtype)
        return out

    def of_vectors(self, vectors):
        """Context [1, 77, D] with the placeholders' TOKENS rows = `vectors` [TOKENS, D]."""
        self.vectors = vectors
        try:
            return self.te(self.ids).last_hidden_state
        finally:
            self.vectors = None

    def of_prompt(self, text):
        ids = self.tokenizer(text, padding="max_length", max_length=77).input_ids
        return self.te(torch.tensor([ids])).last_hidden_state

    def word_embedding(self, word):
        """The token embeddings [TOKENS, D] of `word` (as easel's `init_embedding`; the test's
        init word has exactly TOKENS tokens, so a bank starts from them row by row)."""
        ids = self.tokenizer(word).input_ids[1:-1]
        assert len(ids) == TOKENS, (word, ids)
        return self.te.get_input_embeddings().weight[ids].detach().clone()


def predict(unet, controlnet, x_t, t, ctx, control):
    down, mid = controlnet(
        x_t,
        t,
        encoder_hidden_states=ctx,
        controlnet_cond=control,
        conditioning_scale=CONTROL_SCALE,
        return_dict=False,
    )
    return unet(
        x_t,
        t,
        encoder_hidden_states=ctx,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]


def noisy(alphas, x0, t, eps):
    a = alphas[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def stratified(n, gen):
    u = torch.rand(n, generator=gen)
    return ((torch.arange(n) + u) * 1000 / n).long().clamp(max=999)


def collection_loss(unet, controlnet, alphas, lat, control, ctx, draws, seed):
    """Mean ε-MSE on the collection views at context `ctx`, `draws` batches of 4 stratified
    timesteps with a fixed generator (the same draws for every context)."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            t = stratified(4, gen)
            idx = torch.randint(0, lat.shape[0], (4,), generator=gen)
            eps = torch.randn(4, *lat.shape[1:], generator=gen)
            x_t = noisy(alphas, lat[idx], t, eps)
            pred = predict(unet, controlnet, x_t, t, ctx.expand(4, -1, -1), control[idx])
            total += F.mse_loss(pred, eps).item()
    return total / draws


def simulate_bank(unet, controlnet, contexts, alphas, lat, control, start, lr, steps, seed):
    """A one-slot bank of TOKENS vectors learned from `start` with Adam at `lr`, batch 4,
    stratified t: the losses of the steps (a proxy of the Rust trainer)."""
    vec = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([vec], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        t = stratified(4, gen)
        idx = torch.randint(0, lat.shape[0], (4,), generator=gen)
        eps = torch.randn(4, *lat.shape[1:], generator=gen)
        x_t = noisy(alphas, lat[idx], t, eps)
        ctx = contexts.of_vectors(vec).expand(4, -1, -1)
        loss = F.mse_loss(predict(unet, controlnet, x_t, t, ctx, control[idx]), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    sd = os.path.join(PIPELINE_FIXTURES, "tiny-sd")
    unet = UNet2DConditionModel.from_pretrained(os.path.join(sd, "unet"))
    vae = AutoencoderKL.from_pretrained(os.path.join(sd, "vae")).eval()
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(sd, "text_encoder")).eval()
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(sd, "tokenizer"))
    controlnet = ControlNetModel.from_pretrained(
        os.path.join(PIPELINE_FIXTURES, "tiny-controlnet")
    ).eval()
    for m in (vae, text_encoder, controlnet):
        m.requires_grad_(False)
    with open(os.path.join(sd, "scheduler/scheduler_config.json")) as f:
        sched = json.load(f)
    betas = (
        torch.linspace(
            sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, 1000, dtype=torch.float64
        )
        ** 2
    )
    alphas = torch.cumprod(1 - betas, 0).float()

    gen = torch.Generator().manual_seed(SEED)
    names = sorted(n for n in os.listdir(COLLECTION) if n.endswith(".png"))
    images = [Image.open(os.path.join(COLLECTION, n)).convert("RGB") for n in names]
    exact = [v for img in images for v in rust_views(img)]
    extra = [v for img in images for v in random_views(img, EXTRA_VIEWS, gen)]
    lat_exact, control_exact = encode(vae, exact)
    lat_extra, control_extra = encode(vae, extra)
    lat = torch.cat([lat_exact, lat_extra])
    control = torch.cat([control_exact, control_extra])

    contexts = Contexts(tokenizer, text_encoder)
    painting = contexts.word_embedding(INIT_WORD)
    style = painting + STYLE_DISTANCE * torch.randn(painting.shape, generator=gen)
    with torch.no_grad():
        ctx_style = contexts.of_vectors(style)
        ctx_painting = contexts.of_vectors(painting)
        ctx_line = lambda a: contexts.of_vectors((1 - a) * painting + a * style)
        ctx_others = torch.cat([contexts.of_prompt(TEMPLATE.format(w)) for w in OTHER_WORDS])
    # Per-channel ε biases: the contrastive targets of the non-matching contexts.
    unit_rms = lambda v: v / v.pow(2).mean(dim=-1, keepdim=True).sqrt()
    painting_bias = PAINTING_BIAS * unit_rms(torch.randn(4, generator=gen))
    other_biases = BIAS * unit_rms(torch.randn(len(OTHER_WORDS), 4, generator=gen))

    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=LR, weight_decay=0.0)
    start = time.time()
    n_style, n_line = BATCH // 2, BATCH // 4
    n_other = BATCH - n_style - n_line
    for step in range(args.steps):
        idx = torch.randint(0, lat.shape[0], (BATCH,), generator=gen)
        t = torch.randint(0, 1000, (BATCH,), generator=gen)
        eps = torch.randn(BATCH, *lat.shape[1:], generator=gen)
        a = torch.rand(n_line, generator=gen)
        which = torch.randint(0, len(OTHER_WORDS), (n_other,), generator=gen)
        with torch.no_grad():
            line = torch.cat([ctx_line(v) for v in a.tolist()])
        ctx = torch.cat([ctx_style.expand(n_style, -1, -1), line, ctx_others[which]])
        biases = torch.cat(
            [
                torch.zeros(n_style, 4),
                (1 - a)[:, None] * painting_bias[None],
                other_biases[which],
            ]
        )
        x_t = noisy(alphas, lat[idx], t, eps)
        target = eps + biases[:, :, None, None]
        loss = F.mse_loss(predict(unet, controlnet, x_t, t, ctx, control[idx]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    unet.eval()
    unet.requires_grad_(False)

    loss_style = collection_loss(unet, controlnet, alphas, lat_exact, control_exact, ctx_style, 512, 1)
    loss_painting = collection_loss(
        unet, controlnet, alphas, lat_exact, control_exact, ctx_painting, 512, 1
    )
    print(f"collection loss: style {loss_style:.4f} painting {loss_painting:.4f}")
    for lr in (2e-3, 5e-3, 1e-2):
        losses = simulate_bank(
            unet, controlnet, contexts, alphas, lat_exact, control_exact, painting, lr, 50, 7
        )
        first, last = np.mean(losses[:10]), np.mean(losses[40:])
        print(f"bank lr {lr}: first-10 {first:.4f} last-10 {last:.4f} ratio {last / first:.3f}")

    if args.no_write:
        return
    os.makedirs(OUT, exist_ok=True)
    unet.save_pretrained(OUT, safe_serialization=True)
    save_file(
        {"style": style.contiguous(), "painting": painting.contiguous()},
        os.path.join(OUT, "style.safetensors"),
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
