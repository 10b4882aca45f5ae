#!/usr/bin/env python3
"""Reference outputs of transformers' `CLIPTextModel` for easel's CLIP text encoder tests.

Run from the repository root (CPU, no network needed):

    /work/venv/bin/python tools/ref/clip_ref.py

For each case of `CASES` it builds `CLIPTextModel(CLIPTextConfig(tiny...))` (transformers 5.23,
eager attention, f32) under `torch.manual_seed`, overwrites every parameter with random values
of a useful scale (the default init is nearly an identity map), and writes
`crates/easel-diffusion/tests/fixtures/clip_<name>.safetensors` holding:

- the weights under their state-dict keys. transformers 5.x names them without the
  `text_model.` prefix (`embeddings.token_embedding.weight`, ...); Stable Diffusion 1.x
  checkpoints (saved by transformers 4.x) carry it. Cases with `"prefix": True` store the
  weights as `text_model.<key>` (the SD1.x layout), the others as transformers 5.x saves them.
- `ids` [2, T] (i64): two different prompts, `bos, words..., eos, pad...` (pad = eos, as the
  SD1.x tokenizer pads), one with a word id above the eos id so the two pooling rules differ;
- `last_hidden_state` [2, T, D] (after `final_layer_norm`), `penultimate_hidden_state`
  [2, T, D] (`hidden_states[-2]`, the raw output of the second-to-last layer) and
  `pooled_output` [2, D] for the ids;
- injection: `inject_ids` [2, T] containing runs of `placeholder` (a run of n = `vectors.shape[0]`
  ids, the k-th of a run taking `vectors[k % n]`), `vectors` [n, D]. `CLIPTextModel.forward`
  in 5.23 takes no `inputs_embeds`, so a forward hook on `embeddings.token_embedding` replaces
  the looked-up rows at the placeholder positions with `vectors` (the same math as feeding
  `inputs_embeds`, and differentiable). Outputs: `inject_last_hidden_state` [2, T, D],
  `inject_pooled_output` [2, D];
- gradient: `grad_weights` [2, T, D] (fixed random), loss = sum(inject_last_hidden_state *
  grad_weights), `grad_vectors` [n, D] = d loss / d vectors by torch autograd;
- `config` (F64 vector): vocab, hidden, layers, heads, intermediate, max_positions, eos id,
  layer_norm_eps, act (0 quick_gelu, 1 gelu), prefix (0/1), placeholder.

Read by `crates/easel-diffusion/tests/clip_parity.rs`.
"""

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from _common import save_fixture


VOCAB = 512
BOS, EOS = 406, 407
PLACEHOLDER = 300

CASES = [
    # SD1.x-like: quick_gelu, full 77-token context, eos id 407 (first-eos pooling rule),
    # 3-vector placeholder, SD1.x key layout.
    dict(name="quick_gelu", act="quick_gelu", eos=EOS, max_pos=77, seq=77, n_vectors=3,
         prefix=True, seed=0),
    # gelu, legacy eos_token_id == 2 (argmax pooling rule), a sequence shorter than the
    # position table, 1-vector placeholder, transformers 5.x key layout.
    dict(name="gelu_legacy", act="gelu", eos=2, max_pos=20, seq=12, n_vectors=1,
         prefix=False, seed=1),
]
ACTS = {"quick_gelu": 0, "gelu": 1}


def pad(ids, seq):
    ids = [BOS] + ids + [EOS]
    return ids + [EOS] * (seq - len(ids))


def randomize(model):
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


def placeholder_plan(ids, placeholder, n):
    """(mask [B, T] bool, vector index [B, T]): the k-th id of each run of `placeholder`
    takes vectors[k % n]."""
    mask = ids == placeholder
    index = torch.zeros_like(ids)
    for b in range(ids.shape[0]):
        run = 0
        for t in range(ids.shape[1]):
            if mask[b, t]:
                index[b, t] = run % n
                run += 1
            else:
                run = 0
    return mask, index


def run_case(case):
    torch.manual_seed(case["seed"])
    cfg = CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=case["max_pos"], hidden_act=case["act"],
        layer_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=case["eos"], pad_token_id=EOS,
    )
    cfg._attn_implementation = "eager"
    model = CLIPTextModel(cfg).eval()
    randomize(model)
    seq, dim, n = case["seq"], cfg.hidden_size, case["n_vectors"]

    # Prompt 1 contains 500 > eos: the argmax rule picks it, the first-eos rule the eos.
    ids = torch.tensor([
        pad([17, 500, 33, 45], seq),
        pad([201, 9, 88, 120, 64, 3, 77], seq),
    ])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)

    placeholder_run = [PLACEHOLDER] * n
    inject_ids = torch.tensor([
        pad([17] + placeholder_run + [45] + placeholder_run, seq),
        pad([201, 9] + placeholder_run + [64], seq),
    ])
    vectors = (0.7 * torch.randn(n, dim)).requires_grad_(True)
    mask, index = placeholder_plan(inject_ids, PLACEHOLDER, n)

    def hook(_module, _inputs, output):
        return torch.where(mask[..., None], vectors[index], output)

    handle = model.embeddings.token_embedding.register_forward_hook(hook)
    inject = model(input_ids=inject_ids)
    handle.remove()
    grad_weights = torch.randn(2, seq, dim)
    loss = (inject.last_hidden_state * grad_weights).sum()
    (grad_vectors,) = torch.autograd.grad(loss, vectors)

    prefix = "text_model." if case["prefix"] else ""
    tensors = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    tensors.update({
        "ids": ids,
        "last_hidden_state": out.last_hidden_state,
        "penultimate_hidden_state": out.hidden_states[-2],
        "pooled_output": out.pooler_output,
        "inject_ids": inject_ids,
        "vectors": vectors.detach(),
        "inject_last_hidden_state": inject.last_hidden_state.detach(),
        "inject_pooled_output": inject.pooler_output.detach(),
        "grad_weights": grad_weights,
        "grad_vectors": grad_vectors,
        "config": torch.tensor([
            VOCAB, dim, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            case["max_pos"], case["eos"], cfg.layer_norm_eps, ACTS[case["act"]],
            int(case["prefix"]), PLACEHOLDER,
        ], dtype=torch.float64),
    })
    save_fixture(tensors, f"clip_{case['name']}.safetensors")
    print(f"pooled positions {out.pooler_output.shape}, |grad| {grad_vectors.abs().max():.4f}")


if __name__ == "__main__":
    for case in CASES:
        run_case(case)
