#!/usr/bin/env python3
"""Gather tools/gpu/check.sh's per-step files into OUT/check.json (standard library only).

    python tools/gpu/summarize.py --out DIR --config sd15 --device cuda --wall SECONDS [--build FILE]

check.json = {"config", "device", "date", "wall_s", "build" (the carried binary's BUILD.txt lines),
"machine" (device.txt lines), "pass" (every step passed or was skipped for the device),
"steps": [{"step", "status", "rc", "seconds", "limit_s", "log", "result"}] where "result" is
the step's own JSON output when it wrote one, and "figures": the numbers docs/gpu.md asks for,
pulled out of those results (null where a step failed)}.
"""
import argparse
import json
import os
import time

# The result file each step writes into OUT (see check.sh's step functions).
RESULTS = {
    "parity": ["sd15_parity.json"],
    "bench": ["bench.json"],
    "bench-long": ["bench_long.json"],
    "stylize-1024": ["stylize_large.json"],
    "adain-f16": ["adain_f16.json"],
    "stytr": ["stytr.json"],
    "adain-f32": ["adain_f32.json"],
    "cpu-isa": ["cpu_isa.json"],
}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def lines(path):
    try:
        with open(path) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except OSError:
        return None


def figures(results):
    """The digest: parity verdicts, the diffusers table, peak memory, fast-stylizer ratios."""
    out = {}
    parity = results.get("parity")
    if parity:
        out["sd15_parity"] = {"pass": parity.get("pass"), "max_rel_err": parity.get("max_rel_err"),
                              "tol": parity.get("tol")}
    table = []
    for step in ("bench", "bench-long"):
        r = results.get(step)
        if r:
            out[f"{step}_parity"] = r.get("easel", {}).get("parity")
            table += r.get("table", [])
    if table:
        out["diffusers_table"] = table
    big = results.get("stylize-1024")
    if big and big.get("workloads"):
        w = big["workloads"][0]
        out["stylize_large"] = {k: w.get(k) for k in ("median_ms", "dtype", "peak_memory_bytes",
                                                        "memory_kind", "sampled_device_peak_bytes")}
    for step in ("adain-f16", "adain-f32", "stytr"):
        r = results.get(step)
        if r:
            out[step] = r.get("rows")
    isa = results.get("cpu-isa")
    if isa:
        out["cpu_isa"] = {k: isa.get(k) for k in ("pass", "avx512f", "avx2_fma")}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--wall", type=float, required=True)
    ap.add_argument("--build")
    args = ap.parse_args()
    steps = []
    with open(os.path.join(args.out, "steps.jsonl")) as f:
        for line in f:
            if line.strip():
                steps.append(json.loads(line))
    results = {}
    for s in steps:
        s["log"] = f"logs/{s['step']}.log"
        s["result"] = None
        for name in RESULTS.get(s["step"], []):
            r = load(os.path.join(args.out, name))
            if r is not None:
                s["result"] = r
                results[s["step"]] = r
    doc = {
        "config": args.config,
        "device": args.device,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": args.wall,
        "build": lines(args.build) if args.build else None,
        "machine": lines(os.path.join(args.out, "device.txt")),
        "pass": all(s["status"] in ("pass", "skipped-device", "dry-run") for s in steps),
        "steps": steps,
        "figures": figures(results),
    }
    tmp = os.path.join(args.out, "check.json.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, os.path.join(args.out, "check.json"))
    for s in steps:
        print(f"{s['step']:<14}{s['status']:<16}{s['seconds']:>5}s")


if __name__ == "__main__":
    main()
