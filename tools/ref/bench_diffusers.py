#!/usr/bin/env python3
"""easel vs diffusers 0.42.1, side by side on the same weights: parity first, then speed.

    python tools/ref/bench_diffusers.py --easel PATH/TO/easel [--config sd15|tiny]
        [--device cuda|cpu] [--size 512] [--runs 20] [--warmup 3] [--workloads all]
        [--sd DIR --controlnet DIR] [--out DIR] [--bpe FILE] [--no-graphs] [--json FILE]

1. Weights. Without --sd: seeded random weights (torch.manual_seed(--seed)) of SD 1.5's shapes
   (`--config tiny`: the small shapes of easel-pipeline's tests/fixtures) for diffusers'
   UNet2DConditionModel, ControlNetModel, AutoencoderKL and transformers' CLIPTextModel, PyTorch's
   default init plus random norm affines and non-zero ControlNet zero-convs (as
   tools/ref/sd15_parity.py), saved as a diffusers pipeline folder OUT/sd (fp16 on CUDA, fp32 on
   the CPU; tokenizer from the CLIP BPE list of --bpe, SD 1.5's DDIM scheduler) and a ControlNet
   folder OUT/controlnet. With --sd / --controlnet: those folders, as they are.
2. Parity. Fixed seeded inputs (latents [2, 4, h, w], timestep 500, context [2, 77, D], control
   image [2, 3, 8h, 8w], decoder latents [1, 4, h, w]) run through diffusers in the run dtype:
   `ref/unet`, `ref/unet_controlnet`, `ref/vae_decode` go with the inputs into
   OUT/parity.safetensors; `easel bench --parity` compares (rel err ≤ --parity-tol, 1e-2) and
   times nothing if they differ.
3. easel: `EASEL bench --sd OUT/sd --controlnet OUT/controlnet --parity ... --json` (its own
   process, run while this one holds no GPU memory).
4. diffusers, the same workloads (fp16 + SDPA on CUDA, fp32 on the CPU): eager, then (CUDA only)
   captured in CUDA graphs with channels_last models (unet-cfg, unet-controlnet, vae-encode,
   vae-decode; stylize and learn are not graphed). `stylize` is
   StableDiffusionControlNetImg2ImgPipeline (DDIM, 50 steps at strength 0.7 = 35, guidance 7.5,
   output_type "pt"); `learn` is one inversion step: CLIP forward on the prompt with trainable
   token embeddings of its 77 positions (batch 1), ControlNet + UNet forward, ε-MSE, backward,
   AdamW on those embeddings only (easel's learn step also runs CLIP with its bank's vectors).
   Timing: median of --runs after --warmup, torch.cuda.synchronize around each run. Peak memory:
   torch.cuda.max_memory_allocated (reset before each workload; weights included) on CUDA,
   VmHWM on the CPU (reset through /proc/self/clear_refs).
5. A table: workload, easel ms, diffusers eager ms, graphed ms, ratios ours / eager and
   ours / graphed, peak memory of both; --json FILE writes everything.

Works on the CPU with `--config tiny --device cpu` (graphs skipped) and on CUDA unchanged.
See docs/gpu.md and docs/performance.md.
"""
import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sd15_parity import CLIP_SD15, CONTROLNET_SD15, UNET_SD15, randomize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BPE = os.path.join(os.path.dirname(ROOT), "shared/data/clip/bpe_simple_vocab_16e6.txt.gz")
WORKLOADS = ["unet-cfg", "unet-controlnet", "vae-encode", "vae-decode", "stylize", "learn"]
GRAPHED = {"unet-cfg", "unet-controlnet", "vae-encode", "vae-decode"}
PROMPT = "a city street at dusk, oil painting in the style of van gogh"  # easel's BENCH_PROMPT
TIMESTEP = 500

VAE_SD15 = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512,
    scaling_factor=0.18215,
)
# easel-pipeline's tests/fixtures tiny models (tools/ref/pipeline_ref.py), CLIP with the full
# 49408-token vocabulary so that the real tokenizer fits.
TINY = dict(sample_size=8, block_out_channels=(16, 32), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=32,
            attention_head_dim=4, norm_num_groups=8)
UNET_TINY = dict(TINY, in_channels=4, out_channels=4,
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
CONTROLNET_TINY = dict({k: v for k, v in TINY.items() if k != "sample_size"}, in_channels=4,
                       conditioning_channels=3, conditioning_embedding_out_channels=(4, 8, 8, 16))
VAE_TINY = dict(VAE_SD15, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
                norm_num_groups=8, sample_size=64)
CLIP_TINY = dict(CLIP_SD15, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                 steps_offset=1, prediction_type="epsilon", timestep_spacing="leading")


def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(bpe, folder):
    """vocab.json + merges.txt of CLIP ViT-L/14's tokenizer, derived from open_clip's BPE list
    as open_clip does (256 bytes, their </w> forms, 48894 merges, start, end: 49408 ids)."""
    if not os.path.isfile(bpe):
        raise SystemExit(f"no CLIP BPE list at {bpe}: pass --bpe FILE (bpe_simple_vocab_16e6.txt.gz, "
                         "in ../shared/data/clip; copy it into gpu/ for a device run)")
    lines = gzip.open(bpe, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:48894 + 1]]
    tokens = bytes_to_unicode()
    vocab = tokens + [t + "</w>" for t in tokens] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    return tokenizer


def make_weights(args, save_dtype):
    """Random models saved as OUT/sd (pipeline folder) and OUT/controlnet."""
    torch.manual_seed(args.seed)
    tiny = args.config == "tiny"
    unet = UNet2DConditionModel(**(UNET_TINY if tiny else UNET_SD15)).eval()
    controlnet = ControlNetModel(**(CONTROLNET_TINY if tiny else CONTROLNET_SD15)).eval()
    vae = AutoencoderKL(**(VAE_TINY if tiny else VAE_SD15)).eval()
    clip_cfg = CLIPTextConfig(**(CLIP_TINY if tiny else CLIP_SD15))
    text_encoder = CLIPTextModel(clip_cfg).eval()
    for m in (unet, controlnet, vae, text_encoder):
        randomize(m)
    tokenizer = write_tokenizer(args.bpe, os.path.join(args.out, "tokenizer-src"))
    for m in (unet, controlnet, vae, text_encoder):
        m.to(save_dtype)
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(os.path.join(args.out, "sd"), safe_serialization=True)
    controlnet.save_pretrained(os.path.join(args.out, "controlnet"), safe_serialization=True)
    return os.path.join(args.out, "sd"), os.path.join(args.out, "controlnet")


def load_models(sd_dir, cn_dir, dtype, device):
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=AutoencoderKL.from_pretrained(sd_dir, subfolder="vae", torch_dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(sd_dir, subfolder="text_encoder",
                                                   torch_dtype=dtype),
        tokenizer=CLIPTokenizer.from_pretrained(sd_dir, subfolder="tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet", torch_dtype=dtype),
        controlnet=ControlNetModel.from_pretrained(cn_dir, torch_dtype=dtype),
        scheduler=DDIMScheduler.from_pretrained(sd_dir, subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def seeded(seed, shape, unit=False):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) if unit else torch.randn(shape, generator=g)


def parity_file(pipe, args, dtype, device, path):
    latent = args.size // 8
    width = pipe.unet.config.cross_attention_dim
    inputs = {
        "sample": seeded(1, (2, 4, latent, latent)),
        "timestep": torch.tensor([float(TIMESTEP)]),
        "context": seeded(2, (2, 77, width)),
        "cond": seeded(3, (2, 3, args.size, args.size), unit=True),
        "latents": seeded(4, (1, 4, latent, latent)),
    }
    x = {k: v.to(device=device, dtype=dtype) for k, v in inputs.items()}
    with torch.no_grad():
        unet = pipe.unet(x["sample"], TIMESTEP, encoder_hidden_states=x["context"]).sample
        down, mid = pipe.controlnet(x["sample"], TIMESTEP, encoder_hidden_states=x["context"],
                                    controlnet_cond=x["cond"], conditioning_scale=1.0,
                                    return_dict=False)
        with_cn = pipe.unet(x["sample"], TIMESTEP, encoder_hidden_states=x["context"],
                            down_block_additional_residuals=list(down),
                            mid_block_additional_residual=mid).sample
        decoded = pipe.vae.decode(x["latents"]).sample
    refs = {"ref/unet": unet, "ref/unet_controlnet": with_cn, "ref/vae_decode": decoded}
    tensors = dict(inputs)
    tensors.update({k: v.float().cpu() for k, v in refs.items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def read_peak(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def time_fn(fn, device, warmup, runs):
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def workload_fns(pipe, name, args, dtype, device, channels_last=False):
    """The call to time for `name` (inputs made once)."""
    latent = args.size // 8
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def t(v):
        return v.to(device=device, dtype=dtype).contiguous(memory_format=fmt)

    with torch.no_grad():
        ids = pipe.tokenizer([PROMPT, ""], padding="max_length", max_length=77,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        context = pipe.text_encoder(ids)[0].flip(0).contiguous()  # [negative, prompt]
    sample = t(seeded(11, (2, 4, latent, latent)))
    if name == "unet-cfg":
        return lambda: pipe.unet(sample, TIMESTEP, encoder_hidden_states=context).sample
    if name == "unet-controlnet":
        cond = t(seeded(12, (2, 3, args.size, args.size), unit=True))

        def step():
            down, mid = pipe.controlnet(sample, TIMESTEP, encoder_hidden_states=context,
                                        controlnet_cond=cond, conditioning_scale=1.0,
                                        return_dict=False)
            return pipe.unet(sample, TIMESTEP, encoder_hidden_states=context,
                             down_block_additional_residuals=list(down),
                             mid_block_additional_residual=mid).sample
        return step
    if name == "vae-encode":
        image = t(seeded(13, (1, 3, args.size, args.size), unit=True) * 2 - 1)
        return lambda: pipe.vae.encode(image).latent_dist.mean
    if name == "vae-decode":
        latents = t(seeded(14, (1, 4, latent, latent)))
        return lambda: pipe.vae.decode(latents).sample
    if name == "stylize":
        photo = seeded(15, (1, 3, args.size, args.size), unit=True)
        control = seeded(16, (1, 3, args.size, args.size), unit=True)
        gen = torch.Generator(device="cpu")

        def stylize():
            gen.manual_seed(args.seed)
            return pipe(PROMPT, image=photo, control_image=control, strength=0.7,
                        num_inference_steps=50, guidance_scale=7.5, generator=gen,
                        output_type="pt", height=args.size, width=args.size).images
        return stylize
    if name == "learn":
        with torch.no_grad():
            one = pipe.tokenizer([PROMPT], padding="max_length", max_length=77,
                                 return_tensors="pt").input_ids.to(device)
            init = pipe.text_encoder.get_input_embeddings()(one).float()
        emb = torch.nn.Parameter(init.clone())
        opt = torch.optim.AdamW([emb], lr=5e-3)
        x0 = seeded(17, (1, 4, latent, latent)).to(device)
        cond = seeded(18, (1, 3, args.size, args.size), unit=True).to(device=device, dtype=dtype)
        acp = pipe.scheduler.alphas_cumprod
        for m in (pipe.unet, pipe.controlnet, pipe.text_encoder):
            m.requires_grad_(False)
        step = [0]

        def learn():
            g = torch.Generator().manual_seed(args.seed + step[0])
            step[0] += 1
            t_ = int(torch.randint(0, 1000, (1,), generator=g))
            eps = torch.randn((1, 4, latent, latent), generator=g).to(device)
            a = float(acp[t_])
            x_t = (a ** 0.5 * x0 + (1 - a) ** 0.5 * eps).to(dtype)
            # CLIPTextModel takes no inputs_embeds: the token embedding's output is swapped.
            table = pipe.text_encoder.get_input_embeddings()
            hook = table.register_forward_hook(lambda m, i, o: emb.to(o.dtype))
            try:
                ctx = pipe.text_encoder(one)[0]
            finally:
                hook.remove()
            down, mid = pipe.controlnet(x_t, t_, encoder_hidden_states=ctx, controlnet_cond=cond,
                                        conditioning_scale=1.0, return_dict=False)
            pred = pipe.unet(x_t, t_, encoder_hidden_states=ctx,
                             down_block_additional_residuals=list(down),
                             mid_block_additional_residual=mid).sample
            loss = torch.nn.functional.mse_loss(pred.float(), eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return learn
    raise ValueError(name)


def graphed(fn):
    """`fn` captured in a CUDA graph: warm-up on a side stream, capture, replay."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.no_grad():
        fn()
    return g.replay


def run_easel(args, sd_dir, cn_dir, parity_path, dtype_name):
    cmd = [args.easel, "bench", "--sd", sd_dir, "--controlnet", cn_dir, "--offline",
           "--device", args.device, "--dtype", dtype_name, "--size", str(args.size),
           "--runs", str(args.runs), "--warmup", str(args.warmup),
           "--workload", ",".join(args.workloads), "--parity", parity_path,
           "--parity-tol", str(args.parity_tol), "--json"]
    if args.vae_tiling:
        cmd.append("--vae-tiling")
    print("+ " + " ".join(cmd), file=sys.stderr)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"easel bench failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def fmt_ms(v):
    return "-" if v is None else f"{v:.2f}"


def fmt_ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def fmt_gib(v):
    return "-" if v is None else f"{v / 2**30:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--easel", required=True, help="path of the easel binary")
    ap.add_argument("--config", choices=["sd15", "tiny"], default="sd15")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workloads", default="all")
    ap.add_argument("--sd", help="a diffusers SD 1.5 folder instead of random weights")
    ap.add_argument("--controlnet", help="a diffusers ControlNet folder (with --sd)")
    ap.add_argument("--out", default="/tmp/easel-bench")
    ap.add_argument("--bpe", default=DEFAULT_BPE, help="open_clip's bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parity-tol", type=float, default=1e-2)
    ap.add_argument("--vae-tiling", action="store_true", help="easel's tiled VAE (ours only)")
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--json", help="write all results to this file")
    args = ap.parse_args()
    args.workloads = WORKLOADS if args.workloads == "all" else args.workloads.split(",")
    for w in args.workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w}: use {', '.join(WORKLOADS)} or all")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype, dtype_name = (torch.float16, "f16") if cuda else (torch.float32, "f32")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)

    t0 = time.perf_counter()
    if args.sd:
        if not args.controlnet:
            raise SystemExit("--sd needs --controlnet")
        sd_dir, cn_dir = args.sd, args.controlnet
    else:
        sd_dir, cn_dir = make_weights(args, dtype)
    print(f"weights ready in {time.perf_counter() - t0:.1f} s: {sd_dir}, {cn_dir}", file=sys.stderr)

    pipe = load_models(sd_dir, cn_dir, dtype, device)
    parity_path = os.path.join(args.out, "parity.safetensors")
    parity_file(pipe, args, dtype, device, parity_path)
    # easel runs while this process holds no GPU memory.
    pipe.to("cpu")
    if cuda:
        torch.cuda.empty_cache()
    ours = run_easel(args, sd_dir, cn_dir, parity_path, dtype_name)
    print(f"parity: {json.dumps(ours['parity'])}", file=sys.stderr)
    pipe.to(device)

    theirs = {}
    for name in args.workloads:
        reset_peak(device)
        fn = workload_fns(pipe, name, args, dtype, device)
        if name == "learn":
            eager = time_fn(fn, device, args.warmup, args.runs)
        else:
            with torch.no_grad():
                eager = time_fn(fn, device, args.warmup, args.runs)
        theirs[name] = {"eager_ms": statistics.median(eager), "eager_samples_ms": eager,
                        "peak_memory_bytes": read_peak(device)}
        del fn
    if cuda and not args.no_graphs:
        for m in (pipe.unet, pipe.controlnet, pipe.vae):
            m.to(memory_format=torch.channels_last)
        for name in args.workloads:
            if name not in GRAPHED:
                continue
            replay = graphed(workload_fns(pipe, name, args, dtype, device, channels_last=True))
            samples = time_fn(replay, device, args.warmup, args.runs)
            theirs[name]["graphed_ms"] = statistics.median(samples)
            theirs[name]["graphed_samples_ms"] = samples
            del replay
            torch.cuda.empty_cache()

    ours_by_name = {w["name"]: w for w in ours["workloads"]}
    print(f"\neasel vs diffusers {diffusers.__version__} (torch {torch.__version__}), "
          f"{device.type} {dtype_name}, {args.size}², {args.config if not args.sd else sd_dir}, "
          f"median of {args.runs} runs after {args.warmup} warm-up; parity max rel err "
          f"{ours['parity']['max_rel_err']:.2e}")
    if cuda:
        print(f"device: {torch.cuda.get_device_name()}")
    head = (f"{'workload':<16}{'easel ms':>10}{'eager ms':>10}{'graphed ms':>12}"
            f"{'ours/eager':>12}{'ours/graphed':>14}{'easel GiB':>11}{'diffusers GiB':>15}")
    print(head)
    rows = []
    for name in args.workloads:
        o, d = ours_by_name[name], theirs[name]
        row = dict(workload=name, easel_ms=o["median_ms"], eager_ms=d["eager_ms"],
                   graphed_ms=d.get("graphed_ms"), easel_peak_bytes=o["peak_memory_bytes"],
                   easel_sampled_device_peak_bytes=o.get("sampled_device_peak_bytes"),
                   diffusers_peak_bytes=d["peak_memory_bytes"])
        rows.append(row)
        print(f"{name:<16}{fmt_ms(row['easel_ms']):>10}{fmt_ms(row['eager_ms']):>10}"
              f"{fmt_ms(row['graphed_ms']):>12}{fmt_ratio(row['easel_ms'], row['eager_ms']):>12}"
              f"{fmt_ratio(row['easel_ms'], row['graphed_ms']):>14}"
              f"{fmt_gib(row['easel_peak_bytes']):>11}{fmt_gib(row['diffusers_peak_bytes']):>15}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"easel": ours, "diffusers": theirs, "table": rows,
                       "versions": {"diffusers": diffusers.__version__,
                                    "torch": torch.__version__},
                       "device": torch.cuda.get_device_name() if cuda else "cpu",
                       "date": time.strftime("%Y-%m-%d")}, f, indent=1)


if __name__ == "__main__":
    main()
