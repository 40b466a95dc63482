#!/usr/bin/env python3
"""The GPU benchmark's verdict: our rows (native/tests/cuda_bench.cc's JSON) beside PyTorch's
(bench/pytorch_bench.py --device cuda: eager, and optionally torch.compile), paired by row id,
as a markdown table with our/their ratios and the targets met or missed.

    python3 bench/gpu_compare.py --ours ours.json --eager eager.json [--compile compile.json] \\
        [--md bench.md] [--json bench.json] [--gpu-name NAME] [--peak-tflops T]

Targets (training at cuda_bench's batch, inference at its inference batch; ViT-B/16 in the
GPU check):
  train-speed     each RepAdapter training row in bf16: our images/s ≥ 1.3 × PyTorch eager's
  infer-speed     folded inference in bf16: our images/s ≥ 1.25 × PyTorch eager's
  fold-equal      our folded inference as fast as our plain backbone, each dtype: medians within
                  2 % of each other (they run the same products; 2 % is the noise allowed)
  train-memory    each training row: our device memory ≤ 0.8 × PyTorch eager's
                  torch.cuda.max_memory_allocated (ours: deviceUsedMB, everything the backend
                  holds; see cuda_bench.cc)
Reported without a target: ratios against torch.compile, achieved TFLOP/s and the fraction of
the card's dense bf16 peak (from the device name: H100 SXM and H200 989 TFLOP/s, H100 PCIe 756,
A100 312; --peak-tflops overrides), and the measured bf16 matrix-product ceiling if the eager
run measured one (--measure-ceiling). A target whose rows are missing on either side is listed
as "no data", never as met. Our step includes the host-to-device upload of the images (ViT's
forward takes host memory); the "without upload" ratio subtracts cuda_bench's uploadMs, for
information only.

--json writes {ours, pytorchEager, pytorchCompile, comparison: {gpu, peakTflops, rows, targets}}.
Exit status 0 when the table was written (met or not), 1 when an input cannot be read.
"""
import argparse
import json
import math
import subprocess
import sys

PEAK_BF16_DENSE = [  # (substring of the device name, dense bf16 TFLOP/s by the datasheets)
    ("H200 NVL", None), ("H100 NVL", None),  # other clocks and power: no number here
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0),
]
TARGETS = dict(train_speed=1.3, infer_speed=1.25, fold_equal=0.02, train_memory=0.8)


def load(path):
    if not path:
        return None
    with open(path) as f:
        return json.load(f)


def rows_by_id(report):
    return {r["id"]: r for r in (report or {}).get("rows", [])}


def ok(r):
    return r is not None and r.get("status") == "ok" and r.get("imagesPerSec")


def peak_for(name):
    for key, tflops in PEAK_BF16_DENSE:
        if name and key.lower() in name.lower():
            return tflops
    return None


def gpu_name(eager, given):
    if given:
        return given
    name = ((eager or {}).get("host") or {}).get("gpu")
    if name:
        return name
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def fmt(v, digits=3):
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    dec = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:.{min(dec, 6)}f}"


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def compare(ours, eager, compiled, name, peak):
    theirs, comp = rows_by_id(eager), rows_by_id(compiled)
    rows = []
    for r in ours.get("rows", []):
        # "-graph" (replayed as a CUDA graph) and "-recompute" (GELU input recomputed in backward)
        # rows do the same step: PyTorch's row is the same.
        torch_id = r["id"].replace("-graph/", "/", 1).replace("-recompute/", "/", 1)
        e, c = theirs.get(torch_id), comp.get(torch_id)
        ips = r.get("imagesPerSec") if ok(r) else None
        no_upload = None
        if ips and r.get("uploadMs") is not None and r["stepMs"]["median"] > r["uploadMs"]:
            no_upload = r["batch"] * 1000 / (r["stepMs"]["median"] - r["uploadMs"])
        row = dict(id=r["id"], method=r["method"], kind=r["kind"], dtype=r["dtype"], batch=r["batch"],
                   status=r["status"], note=r.get("note"),
                   oursMs=r.get("stepMs", {}).get("median") if ok(r) else None,
                   oursIqrMs=r.get("stepMs", {}).get("iqr") if ok(r) else None,
                   oursImagesPerSec=ips, oursUploadMs=r.get("uploadMs"),
                   eagerImagesPerSec=e["imagesPerSec"] if ok(e) else None,
                   eagerStatus=(e or {}).get("status", "missing"), eagerNote=(e or {}).get("note"),
                   compileImagesPerSec=c["imagesPerSec"] if ok(c) else None,
                   compileStatus=(c or {}).get("status", "missing") if compiled else None,
                   compileSeconds=(c or {}).get("compileSeconds"),
                   tflops=r.get("tflops") if ok(r) else None,
                   oursDeviceMB=r.get("deviceUsedMB"), oursAllocatedMB=r.get("peakAllocatedMB"),
                   eagerDeviceMB=e.get("peakDeviceMB") if ok(e) else None,
                   compileDeviceMB=c.get("peakDeviceMB") if ok(c) else None)
        row["vsEager"] = ratio(ips, row["eagerImagesPerSec"])
        row["vsEagerWithoutUpload"] = ratio(no_upload, row["eagerImagesPerSec"])
        row["vsCompile"] = ratio(ips, row["compileImagesPerSec"])
        row["peakFraction"] = ratio(row["tflops"], peak) if r["dtype"] == "bf16" else None  # a bf16 peak
        row["memoryRatio"] = ratio(row["oursDeviceMB"], row["eagerDeviceMB"])
        rows.append(row)
    return rows


def targets(rows, ours):
    by_id = {r["id"]: r for r in rows}
    out = []

    def add(target, rid, value, need, met, detail):
        out.append(dict(target=target, id=rid, value=value, need=need,
                        verdict="no data" if met is None else "met" if met else "MISSED", detail=detail))

    for r in rows:
        if r["kind"] == "train" and r["dtype"] == "bf16":
            v = r["vsEager"]
            add("train-speed", r["id"], v, f"≥ {TARGETS['train_speed']}× eager images/s",
                None if v is None else v >= TARGETS["train_speed"],
                f"ours {fmt(r['oursImagesPerSec'])} vs eager {fmt(r['eagerImagesPerSec'])} images/s"
                + (f"; vs compile {fmt(r['vsCompile'])}×" if r["vsCompile"] is not None else "")
                + (f"; {fmt(r['tflops'])} TFLOP/s" if r["tflops"] is not None else ""))
        if r["method"] == "infer-folded" and r["dtype"] == "bf16":
            v = r["vsEager"]
            add("infer-speed", r["id"], v, f"≥ {TARGETS['infer_speed']}× eager images/s",
                None if v is None else v >= TARGETS["infer_speed"],
                f"ours {fmt(r['oursImagesPerSec'])} vs eager {fmt(r['eagerImagesPerSec'])} images/s")
        if r["method"] == "infer-folded":
            plain = by_id.get(r["id"].replace("infer-folded/", "infer-plain/", 1))
            v = None
            if r["oursMs"] is not None and plain and plain["oursMs"] is not None:
                v = r["oursMs"] / plain["oursMs"] - 1
            add("fold-equal", r["id"], v, f"folded/plain within ±{TARGETS['fold_equal']:.0%}",
                None if v is None else abs(v) <= TARGETS["fold_equal"],
                f"folded {fmt(r['oursMs'])} ms (IQR {fmt(r['oursIqrMs'])}) vs plain "
                f"{fmt(plain and plain['oursMs'])} ms (IQR {fmt(plain and plain['oursIqrMs'])})")
        if r["kind"] == "train":
            v = r["memoryRatio"]
            add("train-memory", r["id"], v, f"≤ {TARGETS['train_memory']}× eager peak",
                None if v is None else v <= TARGETS["train_memory"],
                f"ours {fmt(r['oursDeviceMB'])} MB (allocations {fmt(r['oursAllocatedMB'])} MB) vs eager "
                f"{fmt(r['eagerDeviceMB'])} MB")
    return out


def markdown(ours, eager, compiled, name, peak, rows, tgts):
    host = (eager or {}).get("host") or {}
    ceiling = (host.get("bf16Matmul") or {}).get("tflops")
    s = ours.get("settings", {})
    lines = ["# GPU benchmark: repadapter beside PyTorch", "",
             f"Device: {name or 'unknown'}; dense bf16 peak {fmt(peak) + ' TFLOP/s' if peak else 'unknown'}"
             + (f"; measured bf16 matrix product {fmt(ceiling)} TFLOP/s" if ceiling else "") + ".",
             f"Model {ours.get('model')}; training batch {s.get('batch')}, inference batch {s.get('inferBatch')}; "
             f"ours: warm-up {s.get('warmup')}, up to {s.get('repeats')} steps or {s.get('maxSeconds')} s; "
             f"FLOPs per image: training {fmt((ours.get('flopsPerImage') or {}).get('train', 0) / 1e9)} G, "
             f"inference {fmt((ours.get('flopsPerImage') or {}).get('infer', 0) / 1e9)} G.",
             f"PyTorch {host.get('torch', '?')} (CUDA {host.get('cudaVersion', '?')}), timm {host.get('timm', '?')}; "
             f"eager: warm-up {(eager or {}).get('settings', {}).get('warmup', '?')}, repeats "
             f"{(eager or {}).get('settings', {}).get('repeats', '?')}"
             + ("; torch.compile run: " + ("present" if compiled else "absent") + "."), ""]
    lines.append("| row | ours ms | ours img/s | eager img/s | ours/eager | w/o upload | compile img/s | "
                 "ours/compile | TFLOP/s | % peak | ours MB (alloc) | eager MB | mem ours/eager |")
    lines.append("| --- |" + " ---: |" * 12)
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['id']} | {r['status']}: {(r['note'] or '').replace('|', '/')} |" + " |" * 11)
            continue
        comp = fmt(r["compileImagesPerSec"]) if r["compileImagesPerSec"] else (
            r["compileStatus"] if r["compileStatus"] not in (None, "missing") else "–")
        eager_cell = fmt(r["eagerImagesPerSec"]) if r["eagerImagesPerSec"] else r["eagerStatus"]
        lines.append("| " + " | ".join([
            r["id"], fmt(r["oursMs"]), fmt(r["oursImagesPerSec"]), eager_cell, fmt(r["vsEager"]),
            fmt(r["vsEagerWithoutUpload"]), comp, fmt(r["vsCompile"]), fmt(r["tflops"]),
            fmt(100 * r["peakFraction"]) if r["peakFraction"] is not None else "–",
            f"{fmt(r['oursDeviceMB'])} ({fmt(r['oursAllocatedMB'])})" if r["oursDeviceMB"] is not None else "–",
            fmt(r["eagerDeviceMB"]), fmt(r["memoryRatio"])]) + " |")
    lines += ["", "## Targets", "", "| target | row | value | needed | verdict | detail |",
              "| --- | --- | ---: | --- | --- | --- |"]
    for t in tgts:
        v = t["value"]
        shown = "–" if v is None else (f"{100 * v:+.1f} %" if t["target"] == "fold-equal" else f"{fmt(v)}×")
        cells = [t["target"], t["id"], shown, t["need"], t["verdict"], t["detail"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    met = sum(t["verdict"] == "met" for t in tgts)
    missed = sum(t["verdict"] == "MISSED" for t in tgts)
    nodata = sum(t["verdict"] == "no data" for t in tgts)
    lines += ["", f"targets: {met} met, {missed} missed, {nodata} without data"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description="Our GPU benchmark rows beside PyTorch's: ratios and targets.")
    p.add_argument("--ours", required=True, help="cuda_bench's JSON")
    p.add_argument("--eager", help="pytorch_bench.py --device cuda JSON")
    p.add_argument("--compile", help="pytorch_bench.py --device cuda --compile JSON")
    p.add_argument("--md", help="write the markdown here too")
    p.add_argument("--json", help="write everything (inputs and comparison) here")
    p.add_argument("--gpu-name", help="the device name (default: PyTorch's, else nvidia-smi's)")
    p.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: by name)")
    a = p.parse_args(argv)
    try:
        ours = load(a.ours)
    except (OSError, ValueError) as e:
        print(f"gpu_compare: cannot read our results {a.ours}: {e}")
        return 1
    inputs = {}
    for key, path in (("eager", a.eager), ("compile", a.compile)):
        try:
            inputs[key] = load(path)
        except (OSError, ValueError) as e:
            print(f"gpu_compare: no usable {key} results ({path}: {e}); those columns stay empty")
            inputs[key] = None
    eager, compiled = inputs["eager"], inputs["compile"]
    name = gpu_name(eager, a.gpu_name)
    peak = a.peak_tflops or peak_for(name)
    rows = compare(ours, eager, compiled, name, peak)
    tgts = targets(rows, ours)
    md = markdown(ours, eager, compiled, name, peak, rows, tgts)
    print(md, end="")
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(ours=ours, pytorchEager=eager, pytorchCompile=compiled,
                           comparison=dict(gpu=name, peakTflops=peak, targetsNeeded=TARGETS, rows=rows,
                                           targets=tgts)), f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
