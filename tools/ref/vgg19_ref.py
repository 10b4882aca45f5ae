#!/usr/bin/env python3
"""Reference VGG-19 features, Gatys losses, gradients and an L-BFGS trajectory for the VGG-19
perceptual network of `easel_fast` (Gatys style transfer), in the two public checkpoint layouts,
at 1/8 width (channels 64, 128, 256, 512, 512 -> 8, 16, 32, 64, 64) with random weights.
Nothing is downloaded; torchvision is not needed (both networks are plain `nn.Sequential`s).

Layouts:

* `normalised`: `vgg_normalised.pth`, the 53-module `vgg` of naoto0804/pytorch-AdaIN `net.py`
  (`make_vgg` of `tools/ref/adain_ref.py`), with the weights of the committed
  `crates/easel-fast/tests/fixtures/adain_vgg_tiny.pth` (loaded, not rewritten; keys `0.weight`,
  `0.bias`, `2.weight`, ...). Module 0 is a 1x1 conv 3 -> 3 (the Caffe preprocessing, applied
  to RGB in [0, 1] as it is); each conv is `ReflectionPad2d(1)`, `Conv2d(3x3)`, `ReLU`; pools
  are `MaxPool2d(2, 2, ceil_mode=True)`. ReLU module indices: relu1_1 3, relu1_2 6, relu2_1 10,
  relu2_2 13, relu3_1 17, relu3_2 20, relu3_3 23, relu3_4 26, relu4_1 30, relu4_2 33,
  relu4_3 36, relu4_4 39, relu5_1 43, relu5_2 46, relu5_3 49, relu5_4 52.
* `torchvision`: torchvision `vgg19` (`vgg19-dcbb9e9d.pth`): `features` is cfg "E" with
  `Conv2d(3x3, padding=1)` (zero padding) + `ReLU` and `MaxPool2d(2, 2)` (floor mode); conv
  modules 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34, each ReLU at +1, pools at
  4, 9, 18, 27, 36. `classifier` = Linear(64*7*7 -> 32), ReLU, Dropout, Linear(32 -> 32), ReLU,
  Dropout, Linear(32 -> 10) exists only so that the state dict carries torchvision's
  `classifier.{0,3,6}.{weight,bias}` keys; it is never evaluated. The input is RGB in [0, 1],
  normalised as `(x - mean) / std` (ImageNet mean (0.485, 0.456, 0.406), std (0.229, 0.224,
  0.225)) before `features.0`. Weights: `torch.Generator().manual_seed(0)`, every conv then
  every linear in module order, He-normal weights `randn * sqrt(2 / fan_in)` and biases
  `(rand - 0.5) * 0.1` (the `init_` of adain_ref.py).

Spatial sizes (37 x 45 input, the relu{b}_* maps of block b):
normalised (ceil pools) 37x45, 19x23, 10x12, 5x6, 3x3;
torchvision (floor pools) 37x45, 18x22, 9x11, 4x5, 2x2.

Loss (as `tools/ref/gatys_ref.py`, unmasked): style layers relu1_1, relu2_1, relu3_1, relu4_1,
relu5_1, content layer relu4_2. Gram `G = F F^T / (C H W)` of the [C, H*W] activations;
style = sum over the style layers of `mean((G(x) - G(style))^2)` (a mean over the C*C entries);
content = `mean((F(x) - F(photo))^2)` at relu4_2; tv = `mean(dy^2) + mean(dx^2)` of the image
(dy = x[:, :, 1:, :] - x[:, :, :-1, :], dx likewise along the width);
total = 1 * content + 1e5 * style + 10 * tv.

Usage (from the repository root):

    /work/pyref/bin/python tools/ref/vgg19_ref.py

Writes to `crates/easel-fast/tests/fixtures/`:

* `vgg19_torchvision_tiny.pth`: `torch.save(state_dict)` (zip format) of the whole torchvision
  layout model (`features.0.weight`, ..., `features.34.bias`, `classifier.0.weight`, ...,
  `classifier.6.bias`).
* `vgg19_cases.safetensors` (all float32, NCHW):
  - `photo` [1, 3, 37, 45]: chelsea_cat.png, PIL bicubic to 45 x 37, `/ 255`;
    `style` [1, 3, 41, 39]: vangogh_starry_night.jpg, bicubic to 39 x 41;
    `x` [1, 3, 37, 45]: `(photo + 0.1 * rand_like(photo)).clamp(0, 1)` after
    `torch.manual_seed(0)`.
  - for L in `normalised`, `torchvision`:
    `{L}.relu{b}_{i}` [1, C, h, w]: the 16 ReLU outputs for `x`;
    `{L}.losses` [4]: content, style, tv, total at `x` (style image `style`, content `photo`);
    `{L}.grad` [1, 3, 37, 45]: d total / d x;
    `{L}.lbfgs.losses` [20]: `torch.optim.LBFGS([img], lr=1, max_iter=20, history_size=100)`
    from img = photo, one `step(closure)`, the total of each of the 20 closure calls.
    Without a line search the trajectory is not monotone (torchvision: the third closure call
    is ~6.7e8 after an overshooting first quasi-Newton step; normalised: ~142 there, and the
    last call ticks up). Perturbing the photo by 5e-7 moves the totals by <= 1e-4 (relative) for
    the first dozen calls, up to ~1e-2 by call 19, and the normalised call 20 by ~30%.

The outputs are bit-identical with 1 or 2 CPU threads (torch 2.15.0 CPU, AMD EPYC).
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adain_ref import make_vgg  # noqa: E402
from gatys_ref import IMAGES, WEIGHTS, gram, load, losses_and_grad, with_tv  # noqa: E402
from efficientnet_ref import FIXTURES, MEAN, STD  # noqa: E402

WIDTHS = (8, 16, 32, 64, 64)
CFG_E = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"]
CONVS_PER_BLOCK = (2, 2, 4, 4, 4)
RELU_NAMES = [f"relu{b + 1}_{i + 1}" for b, n in enumerate(CONVS_PER_BLOCK) for i in range(n)]
STYLE = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
CONTENT = ["relu4_2"]

NORMALISED_RELU = dict(zip(RELU_NAMES, [3, 6, 10, 13, 17, 20, 23, 26, 30, 33, 36, 39, 43, 46, 49, 52]))
TORCHVISION_CONV = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
TORCHVISION_RELU = dict(zip(RELU_NAMES, [i + 1 for i in TORCHVISION_CONV]))


class TorchvisionVGG19(nn.Module):
    """torchvision.models.vgg19 (cfg "E", no batch norm), widths scaled by `scale`."""

    def __init__(self, scale=8):
        super().__init__()
        layers, c = [], 3
        for v in CFG_E:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, v // scale, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                c = v // scale
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))  # no parameters: not in the state dict
        self.classifier = nn.Sequential(
            nn.Linear(c * 7 * 7, 32), nn.ReLU(True), nn.Dropout(),
            nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
            nn.Linear(32, 10))


def init_(model: nn.Module, gen: torch.Generator) -> None:
    """adain_ref.init_ extended to Linear: He-normal weights, biases uniform in [-0.05, 0.05]."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.Linear):
                fan_in = m.in_features
            else:
                continue
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            m.bias.copy_((torch.rand(m.bias.shape, generator=gen) - 0.5) * 0.1)


class Net:
    """A VGG `nn.Sequential` with a preprocessing function and the ReLU index of each name."""

    def __init__(self, seq, relu_index, pre=lambda x: x):
        self.seq, self.relu_index, self.pre = seq, relu_index, pre
        for name, i in relu_index.items():
            assert isinstance(seq[i], nn.ReLU), (name, i, seq[i])
            assert isinstance(seq[i - 1], nn.Conv2d), (name, i - 1, seq[i - 1])
        convs = [i for i, m in enumerate(seq) if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert [i + 1 for i in convs] == list(relu_index.values()), convs

    def features(self, x, deepest="relu5_4"):
        out, last = {}, self.relu_index[deepest]
        by_index = {i: n for n, i in self.relu_index.items()}
        x = self.pre(x)
        for i, m in enumerate(self.seq[: last + 1]):
            x = m(x)
            if i in by_index:
                out[by_index[i]] = x
        return out


class Objective:
    def __init__(self, net, photo, style):
        self.net = net
        with torch.no_grad():
            fp = net.features(photo, "relu5_1")
            fs = net.features(style, "relu5_1")
            self.content = [fp[t] for t in CONTENT]
            self.targets = [gram(fs[t]) for t in STYLE]

    def __call__(self, x):
        feats = self.net.features(x, "relu5_1")
        content = sum(((feats[t] - p) ** 2).mean() for t, p in zip(CONTENT, self.content))
        style = sum(((gram(feats[t]) - g) ** 2).mean() for t, g in zip(STYLE, self.targets))
        return with_tv(content, style, x)


def lbfgs(obj, photo):
    img = photo.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([img], lr=1, max_iter=20, history_size=100)
    traj = []

    def closure():
        opt.zero_grad()
        total = obj(img)[3]
        total.backward()
        traj.append(float(total.detach()))
        return total

    opt.step(closure)
    assert len(traj) == 20, len(traj)
    return torch.tensor(traj)


def main():
    from safetensors.torch import save_file

    assert WEIGHTS == (1.0, 1e5, 10.0)
    torch.manual_seed(0)
    photo = load(os.path.join(IMAGES, "content/chelsea_cat.png"), (45, 37))
    style = load(os.path.join(IMAGES, "style/vangogh_starry_night.jpg"), (39, 41))
    x = (photo + 0.1 * torch.rand_like(photo)).clamp(0, 1)
    assert photo.shape == (1, 3, 37, 45) and style.shape == (1, 3, 41, 39)
    out = {"photo": photo, "style": style, "x": x}

    # normalised: the committed AdaIN encoder checkpoint.
    vgg = make_vgg((8, 16, 32, 64))
    sd = torch.load(os.path.join(FIXTURES, "adain_vgg_tiny.pth"), weights_only=True)
    vgg.load_state_dict(sd)
    assert isinstance(vgg[0], nn.Conv2d) and vgg[0].kernel_size == (1, 1)
    pools = [i for i, m in enumerate(vgg) if isinstance(m, nn.MaxPool2d)]
    assert pools == [7, 14, 27, 40] and all(vgg[i].ceil_mode for i in pools), pools

    # torchvision: fresh seeded weights, saved.
    tv = TorchvisionVGG19()
    init_(tv, torch.Generator().manual_seed(0))
    tv_sd = tv.state_dict()
    assert list(tv_sd) == [f"features.{i}.{p}" for i in TORCHVISION_CONV for p in ("weight", "bias")] + [
        f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")], list(tv_sd)
    assert tv_sd["classifier.0.weight"].shape == (32, 64 * 7 * 7)
    pools = [i for i, m in enumerate(tv.features) if isinstance(m, nn.MaxPool2d)]
    assert pools == [4, 9, 18, 27, 36] and not any(tv.features[i].ceil_mode for i in pools), pools
    pth = os.path.join(FIXTURES, "vgg19_torchvision_tiny.pth")
    torch.save(tv_sd, pth)

    nets = {
        "normalised": Net(vgg, NORMALISED_RELU),
        "torchvision": Net(tv.features, TORCHVISION_RELU, lambda x: (x - MEAN) / STD),
    }
    for L, net in nets.items():
        net.seq.eval()
        for p in net.seq.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            feats = net.features(x)
        for name in RELU_NAMES:
            f = feats[name]
            assert torch.isfinite(f).all() and (f > 0).any(), (L, name)
            frac = float((f > 0).float().mean())
            print(f"{L}.{name}: {tuple(f.shape)} mean {f.mean():.3f} std {f.std():.3f} "
                  f"max {f.max():.3f} alive {frac:.2f}")
            out[f"{L}.{name}"] = f
        obj = Objective(net, photo, style)
        out[f"{L}.losses"], out[f"{L}.grad"] = losses_and_grad(obj, x)
        g = out[f"{L}.grad"]
        assert torch.isfinite(g).all() and g.abs().max() > 0
        print(f"{L}.losses (content, style, tv, total) {out[f'{L}.losses'].tolist()}")
        print(f"{L}.grad max |g| {g.abs().max():.6g}")
        traj = lbfgs(obj, photo)
        # Without a line search the trajectory is not monotone (lr=1 overshoots on the second
        # quasi-Newton step and may tick up at the end); it must still fall by orders of magnitude.
        assert traj[-1] < 0.1 * traj[0] and traj.min() < 0.01 * traj[0], traj
        out[f"{L}.lbfgs.losses"] = traj
        print(f"{L}.lbfgs.losses {traj.tolist()}")

    path = os.path.join(FIXTURES, "vgg19_cases.safetensors")
    save_file({k: v.detach().contiguous().float() for k, v in out.items()}, path)
    for p in (pth, path):
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
