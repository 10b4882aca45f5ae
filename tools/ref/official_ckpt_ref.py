#!/usr/bin/env python3
"""Official-format LSAST and ArtBank checkpoints (`embeddings_gs-*.pt`) on tiny random weights,
and the embeddings the official code computes from them, for easel's import test
(crates/easel-bank/tests/official_import.rs).

The official `EmbeddingManager.save` (Jamie-Cheung/LSAST and Jamie-Cheung/ArtBank,
`ldm/modules/embedding_manager.py`) pickles whole module objects with `torch.save`:

- LSAST: `{"attention": TransformerBlock, "initial_embeddings": Parameter [1, D]}`. The prompt
  generator is `TransformerBlock(dim=D, n_heads=8, d_head=64, dropout=0.1, dim_out=30 * D)`:
  `x = attn1(norm1(x)) + x; x = attn2(norm2(x), context=init) + x; out = ff(norm3(x))`, the
  feed-forward a GEGLU (`proj: Linear(D, 2 * 4D)`, `x * gelu(gate)`) then `Linear(4D, 30 D)`, no
  residual after it. Its 30 vectors are `attention(init, init)[-1].view(30, D)`.
- ArtBank: `{"string_to_token": {"*": tensor}, "attention": Attentions, "learnable_vector":
  Parameter [1, 1, D]}`, `Attentions`: `x1 = attn1(x); x2 = attn2(x1, x); out = net(x2)` with
  `net = Sequential(Dropout, Linear(D, D))`; its one vector is `attention(v.view(1, 1, D))`.

`CrossAttention` is ldm's: `to_q`, `to_k`, `to_v` (no bias), `to_out = Sequential(Linear,
Dropout)`, softmax attention over `heads`. The classes are defined here under the official module
names (`ldm.modules.attention`, `ldm.modules.embedding_manager`) so that the pickles name the same
globals as the authors' files. The official code hard-codes D = 768 and 8 heads of 64; these
fixtures use D = 16 and 4 heads of 4 (`torch.save` of 768-wide blocks is ~290 MB). The embeddings
are computed in eval mode (dropout off). Every parameter, LayerNorms included, is random.

Two files easel must refuse: `evil/embeddings_gs-1.pt` pickles an object whose `__reduce__`
names `os.system` (loading it with `torch.load(weights_only=False)` would run a shell command);
`other/embeddings_gs-1.pt` is LSAST's block with a plain GELU feed-forward (`gated_ff=False`),
so its pickle names `torch.nn.modules.activation.GELU`, a class no official checkpoint holds.

Beside them, an AUTOMATIC1111 `.pt` embedding as A1111 saves it (`a1111/ink.pt`: string_to_token,
string_to_param {"*": Parameter [2, D]}, name, step, sd_checkpoint, sd_checkpoint_name), which
easel reads the same way.

Writes crates/easel-bank/tests/fixtures/official/:
  lsast/embeddings_gs-99.pt, artbank/embeddings_gs-99.pt, evil/embeddings_gs-1.pt,
  other/embeddings_gs-1.pt, a1111/ink.pt
  expected.safetensors: lsast.vectors [30, D], artbank.vector [1, D], a1111.rows [2, D]

Usage: /work/venv/bin/python tools/ref/official_ckpt_ref.py   (torch CPU, f32)
"""

import os
import sys
import types

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates/easel-bank/tests/fixtures/official")

DIM, HEADS, HEAD_DIM, VECTORS = 16, 4, 4, 30


def official_module(name):
    """An importable module of that name, so that pickle records the official globals."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
    return sys.modules[name]


attention = official_module("ldm.modules.attention")
embedding_manager = official_module("ldm.modules.embedding_manager")


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, dim_out=None, mult=4, glu=False, dropout=0.0):
        super().__init__()
        inner = int(dim * mult)
        project_in = GEGLU(dim, inner) if glu else nn.Sequential(nn.Linear(dim, inner), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner, dim_out or dim))

    def forward(self, x):
        return self.net(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner = dim_head * heads
        context_dim = context_dim or query_dim
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None):
        context = x if context is None else context
        b, n, _ = x.shape
        h = self.heads

        def split(t):
            return t.view(t.shape[0], t.shape[1], h, -1).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        weights = (q @ k.transpose(-1, -2) * self.scale).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class TransformerBlock(nn.Module):
    def __init__(self, dim, n_heads, d_head, dropout=0.0, context_dim=None, gated_ff=True,
                 checkpoint=True, dim_out=None):
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff, dim_out=dim_out)
        self.attn2 = CrossAttention(query_dim=dim, context_dim=context_dim, heads=n_heads,
                                    dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x))


class Attentions(nn.Module):
    def __init__(self, dim, n_heads, d_head, dropout=0.0, context_dim=None, gated_ff=True,
                 checkpoint=True):
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.attn2 = CrossAttention(query_dim=dim, context_dim=context_dim, heads=n_heads,
                                    dim_head=d_head, dropout=dropout)
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, x, context=None):
        return self.net(self.attn2(self.attn1(x), x))


for cls, module in [(GEGLU, attention), (FeedForward, attention), (CrossAttention, attention),
                    (TransformerBlock, embedding_manager), (Attentions, embedding_manager)]:
    cls.__module__ = module.__name__
    setattr(module, cls.__name__, cls)


class RunsAShell:
    """What a hostile checkpoint carries: unpickling calls os.system."""

    def __reduce__(self):
        return (os.system, ("echo this checkpoint ran a command",))


def randomize(module, gen):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def main():
    gen = torch.Generator().manual_seed(15)
    for sub in ("lsast", "artbank", "evil", "other", "a1111"):
        os.makedirs(os.path.join(OUT, sub), exist_ok=True)

    block = TransformerBlock(dim=DIM, n_heads=HEADS, d_head=HEAD_DIM, dropout=0.1,
                             dim_out=VECTORS * DIM)
    randomize(block, gen)
    init = nn.Parameter(torch.randn(1, DIM, generator=gen), requires_grad=False)
    torch.save({"attention": block, "initial_embeddings": init},
               os.path.join(OUT, "lsast/embeddings_gs-99.pt"))
    block.eval()
    with torch.no_grad():
        x = init.view(1, 1, DIM)
        lsast = block(x, x)[-1].view(VECTORS, DIM)

    attentions = Attentions(dim=DIM, n_heads=HEADS, d_head=HEAD_DIM, dropout=0.05)
    randomize(attentions, gen)
    vector = nn.Parameter(torch.randn(1, 1, DIM, generator=gen))
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "attention": attentions,
                "learnable_vector": vector},
               os.path.join(OUT, "artbank/embeddings_gs-99.pt"))
    attentions.eval()
    with torch.no_grad():
        artbank = attentions(vector.view(1, 1, DIM)).view(1, DIM)

    torch.save({"attention": RunsAShell(), "initial_embeddings": init},
               os.path.join(OUT, "evil/embeddings_gs-1.pt"))

    plain = TransformerBlock(dim=DIM, n_heads=HEADS, d_head=HEAD_DIM, gated_ff=False,
                             dim_out=VECTORS * DIM)
    torch.save({"attention": plain, "initial_embeddings": init},
               os.path.join(OUT, "other/embeddings_gs-1.pt"))

    rows = torch.randn(2, DIM, generator=gen)
    torch.save({"string_to_token": {"*": torch.tensor(265)},
                "string_to_param": {"*": nn.Parameter(rows.clone())}, "name": "ink",
                "step": 100, "sd_checkpoint": "e1441589", "sd_checkpoint_name": "v1-5-pruned"},
               os.path.join(OUT, "a1111/ink.pt"))

    save_file({"lsast.vectors": lsast.contiguous(), "artbank.vector": artbank.contiguous(),
               "a1111.rows": rows.contiguous()},
              os.path.join(OUT, "expected.safetensors"))
    print("lsast vectors", tuple(lsast.shape), "std", float(lsast.std()))
    print("artbank vector", tuple(artbank.shape), "std", float(artbank.std()))


if __name__ == "__main__":
    main()
