#!/usr/bin/env python3
"""PyTorch + timm side of the repadapter benchmark: the same workloads, in PyTorch's best CPU setup.

Writes theirs.json in the schema of lib/bench (repadapter-bench/1), so that
`npm run bench -- --compare` (or compareBench) pairs its rows with ours.json by id.

Models are timm's VisionTransformer; RepAdapter modules are the official ones
(luogen1996/RepAdapter: conv_A / conv_B Conv1d, dropout, scale) attached to every block exactly
as test/fixtures/make_fixtures.py does; the folded model is the plain timm ViT loaded with the
folded qkv / fc1 weights. Settings: torch.set_num_threads(os.cpu_count()), torch.inference_mode
for inference, a frozen backbone via requires_grad_(False), torch.optim.AdamW over the trainable
parameters, OMP_WAIT_POLICY=PASSIVE (unless set: OpenMP and OpenBLAS's pool share the cores).
Each workload runs in its own subprocess; peak RSS is resource.getrusage(RUSAGE_SELF).ru_maxrss.

Run with Debian's PyTorch (the pyenv python3 first on PATH has no torch):

    PYTHONPATH=/tmp/timm_site /usr/bin/python3 bench/pytorch_bench.py --model vit_small_patch16_224
    PYTHONPATH=/tmp/timm_site /usr/bin/python3 bench/pytorch_bench.py --plan results/<run>/plan.json \\
        --out results/<run>/theirs.json

Without torch or timm it prints how to get them and exits 0 ("SKIP: ...").

GPU mode (bench/gpu-check.sh runs it beside native/tests/cuda_bench.cc; bench/gpu_compare.py
pairs the rows by id):

    python3 bench/pytorch_bench.py --device cuda --dtypes float32,bf16 --in-process \
        --methods repadapter-attn,repadapter-block,infer-plain,infer-unfolded-attn,infer-folded \
        --batch 64 --infer-batch 256 --out eager.json
    python3 bench/pytorch_bench.py --device cuda --dtypes bf16 --compile --deadline 150 ... \
        --out compile.json

--dtypes makes one row per dtype, ids METHOD/MODEL/bBATCH/DTYPE (f32 or bf16), as cuda_bench
names its rows; bf16 is torch.autocast(bfloat16) over float32 weights. On CUDA: TF32 is off for
matrix products and convolutions (float32 rows are float32, as ours), the step is timed with
torch.cuda.synchronize around it, and peakDeviceMB is torch.cuda.max_memory_allocated over the
timed steps (reset after the warm-up) less what was allocated before the model was built.
--compile runs the model through torch.compile (default mode; the first warm-up step compiles,
its seconds are compileSeconds). --in-process runs every row in this process instead of one
subprocess each (saves the start-up per row; peak RSS is then the process's). --deadline S: rows
not started within S seconds of the start are skipped, and each row's subprocess time limit is cut
to what is left; the JSON is rewritten after every row, so a run cut short keeps what it measured.
"""
import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
import types

SCHEMA = "repadapter-bench/1"

INSTRUCTIONS = """The PyTorch comparison needs PyTorch and timm. On Debian 12:
  apt-get install -y python3-torch python3-torchvision libopenblas0-pthread
  pip download --no-deps timm==1.0.29 && unzip timm-1.0.29-py3-none-any.whl -d /tmp/timm_site
then run this script with Debian's python3 (not a pyenv one without torch) and timm on PYTHONPATH:
  PYTHONPATH=/tmp/timm_site /usr/bin/python3 bench/pytorch_bench.py ...
(from the Node benchmark: REPADAPTER_TIMM_PATH=/tmp/timm_site npm run bench -- --compare)"""

METHODS = ["repadapter-attn", "repadapter-block", "full", "linear-probe",
           "infer-plain", "infer-unfolded-attn", "infer-unfolded-block", "infer-folded",
           "infer-onnxruntime"]
# kind, placement (None: no adapters; "any": the folded row folds the first placement), trainable
METHOD_SPECS = {
    "repadapter-attn": ("train", "attn", "adapters"),
    "repadapter-block": ("train", "block", "adapters"),
    "full": ("train", None, "all"),
    "linear-probe": ("train", None, "head"),
    "infer-plain": ("infer", None, None),
    "infer-unfolded-attn": ("infer", "attn", None),
    "infer-unfolded-block": ("infer", "block", None),
    "infer-folded": ("infer", "any", None),
    "infer-onnxruntime": ("infer", "any", None),  # measured on the Node side only
}
SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
         "large": (1024, 24, 16), "huge": (1280, 32, 16)}
DEFAULTS = dict(model="vit_base_patch16_224", batch=[8, 32], infer_batch=[1, 32], warmup=1,
                repeats=5, num_classes=1000, lr=1e-3, weight_decay=1e-4, seed=0, timeout=1800,
                adapter=dict(hidden=8, groups=2, scale=1, dropout=0.1))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Plan (the same expansion as lib/bench/plan.ts; `--plan` takes Node's plan.json verbatim)
# ----------------------------------------------------------------------------------------------
def preset_arch(name, num_classes):
    m = re.fullmatch(r"vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)", name)
    if not m:
        raise SystemExit(f"unknown preset {name!r} (vit_<tiny|small|base|large|huge>_patch<P>_<S>)")
    width, depth, heads = SIZES[m.group(1)]
    return dict(imageSize=int(m.group(3)), patchSize=int(m.group(2)), width=width, depth=depth,
                heads=heads, mlpHidden=4 * width, numClasses=num_classes)


def size_preset(size, model):
    if size.startswith("vit_"):
        return size
    if size not in SIZES:
        raise SystemExit(f"unknown size {size!r}; sizes: {', '.join(SIZES)}")
    m = re.fullmatch(r"vit_[a-z]+_(patch\d+_\d+)", model)
    return f"vit_{size}_{m.group(1) if m else 'patch16_224'}"


def custom_arch(cfg, num_classes):
    width = int(cfg.get("width", 768))
    hidden = cfg.get("mlpHidden")
    if hidden is None:
        hidden = round(width * float(cfg.get("mlpRatio", 4)))
    return dict(imageSize=int(cfg.get("imageSize", 224)), patchSize=int(cfg.get("patchSize", 16)),
                width=width, depth=int(cfg.get("depth", 12)), heads=int(cfg.get("heads", 12)),
                mlpHidden=int(hidden), numClasses=int(cfg.get("numClasses", num_classes)))


DTYPE_ID = {"float32": "f32", "bfloat16": "bf16"}  # the row-id suffix, as cuda_bench writes it


def dtype_name(d):
    return {"bf16": "bfloat16", "bfloat16": "bfloat16"}.get(d, "float32")


def make_plan(a):
    dtype = dtype_name(a.dtype)
    dtypes = [dtype_name(d.strip()) for d in a.dtypes.split(",")] if a.dtypes else None
    if dtypes:
        dtype = dtypes[0]
    settings = dict(device=a.device, dtype=dtype, warmup=a.warmup, repeats=a.repeats,
                    profile=a.profile, numClasses=a.classes, adapter=dict(DEFAULTS["adapter"]),
                    optimizer="adamw", lr=a.lr, weightDecay=a.weight_decay, seed=a.seed,
                    timeout=a.timeout, compile=a.compile)
    if a.config:
        models = [(a.name, custom_arch(json.loads(a.config), a.classes))]
    elif a.sizes:
        names = []
        for s in a.sizes.split(","):
            n = size_preset(s.strip(), a.model)
            if n not in names:
                names.append(n)
        models = [(n, preset_arch(n, a.classes)) for n in names]
    else:
        models = [(a.model, preset_arch(a.model, a.classes))]
    methods = a.methods.split(",") if a.methods else METHODS
    for m in methods:
        if m not in METHOD_SPECS:
            raise SystemExit(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    placements = a.placements.split(",") if a.placements else ["attn", "block"]
    batch = [int(b) for b in a.batch.split(",")] if a.batch else DEFAULTS["batch"]
    infer_batch = [int(b) for b in a.infer_batch.split(",")] if a.infer_batch else DEFAULTS["infer_batch"]
    workloads = []
    for name, config in models:
        for method in [m for m in METHODS if m in methods]:
            kind, placement, trainable = METHOD_SPECS[method]
            if placement in ("attn", "block") and placement not in placements:
                continue
            if placement == "any":
                placement = placements[0]
            for b in (batch if kind == "train" else infer_batch):
                w = dict(id=f"{method}/{name}/b{b}", method=method, kind=kind, model=name,
                         config=config, placement=placement, trainable=trainable, batch=b)
                if not dtypes:
                    workloads.append(w)
                for d in dtypes or []:
                    workloads.append(dict(w, id=f"{w['id']}/{DTYPE_ID[d]}", dtype=d))
    return dict(schema=SCHEMA, settings=settings, workloads=workloads)


# ----------------------------------------------------------------------------------------------
# Models: timm VisionTransformer + the official RepAdapter (as test/fixtures/make_fixtures.py)
# ----------------------------------------------------------------------------------------------
def build(workload, settings):
    import torch
    import torch.nn as nn
    from timm.models.vision_transformer import VisionTransformer

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from repadapter_torch import attach_adapters  # the definition the test fixtures use

    c = workload["config"]
    a = settings["adapter"]

    def plain():
        m = VisionTransformer(
            img_size=c["imageSize"], patch_size=c["patchSize"], in_chans=3, num_classes=c["numClasses"],
            embed_dim=c["width"], depth=c["depth"], num_heads=c["heads"],
            mlp_ratio=(c["mlpHidden"] + 0.5) / c["width"],  # timm takes int(width * ratio)
            qkv_bias=True, class_token=True, global_pool="token", drop_rate=0.0, drop_path_rate=0.0)
        assert m.blocks[0].mlp.fc1.out_features == c["mlpHidden"]
        return m

    model = plain()
    placement = workload["placement"]
    if placement is None:
        return model
    gen = torch.Generator().manual_seed(settings["seed"] + 7919)
    attach_adapters(model, placement, a["hidden"], a["groups"], a["scale"], a["dropout"])
    # random non-zero adapters (new ones are the identity; nothing may be optimised away)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter_" in name:
                fan_in = p[0].numel() if p.dim() > 1 else 0
                p.copy_(torch.randn(p.shape, generator=gen) * (1 / math.sqrt(fan_in) if fan_in else 0.02))
    if workload["method"] != "infer-folded":
        return model

    # fold (float64): W' = W + s (W B̂) A, c' = c + s W (B̂ a + b); the result is the plain timm ViT
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}

    def fold(W, bias, pre):
        A = sd[pre + ".conv_A.weight"][:, :, 0]
        a_ = sd[pre + ".conv_A.bias"]
        wB = sd[pre + ".conv_B.weight"][:, :, 0]
        d, hg = wB.shape
        g = a["groups"]
        Bhat = torch.zeros(d, hg * g, dtype=torch.float64)
        dg = d // g
        for gi in range(g):
            Bhat[gi * dg:(gi + 1) * dg, gi * hg:(gi + 1) * hg] = wB[gi * dg:(gi + 1) * dg]
        b = sd[pre + ".conv_B.bias"]
        s = a["scale"]
        return W + s * (W @ Bhat) @ A, bias + s * W @ (Bhat @ a_ + b)

    folded_sd = {k: v for k, v in sd.items() if ".adapter_" not in k}
    for i in range(c["depth"]):
        pre = f"blocks.{i}"
        folded_sd[pre + ".attn.qkv.weight"], folded_sd[pre + ".attn.qkv.bias"] = fold(
            sd[pre + ".attn.qkv.weight"], sd[pre + ".attn.qkv.bias"], pre + ".adapter_attn")
        if placement == "block":
            folded_sd[pre + ".mlp.fc1.weight"], folded_sd[pre + ".mlp.fc1.bias"] = fold(
                sd[pre + ".mlp.fc1.weight"], sd[pre + ".mlp.fc1.bias"], pre + ".adapter_mlp")
    folded = plain()
    folded.load_state_dict({k: v.float() for k, v in folded_sd.items()}, strict=True)
    return folded


# ----------------------------------------------------------------------------------------------
# One workload (in its own process)
# ----------------------------------------------------------------------------------------------
def quantile(s, q):
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def spread(samples):
    s = sorted(samples)
    q1, q3 = quantile(s, 0.25), quantile(s, 0.75)
    return dict(median=quantile(s, 0.5), min=s[0], max=s[-1], q1=q1, q3=q3, iqr=q3 - q1,
                mean=sum(s) / len(s))


def rss_now_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def run_workload(workload, settings):
    import timm.models.vision_transformer  # noqa: F401  (imported before the baseline RSS)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count())
    row = dict(workload, status="ok", baselineRssMB=rss_now_mb())
    if workload["method"] == "infer-onnxruntime":
        return dict(row, status="skipped", note="onnxruntime-node runs on the Node side of the benchmark")
    device, dtype = settings["device"], workload.get("dtype", settings["dtype"])
    if device == "cuda" and not torch.cuda.is_available():
        return dict(row, status="skipped", note="cuda: torch.cuda.is_available() is False")
    if device not in ("cpu", "cuda"):
        return dict(row, status="skipped", note=f"unknown device {device}")
    if settings.get("compile") and not hasattr(torch, "compile"):
        return dict(row, status="skipped", note=f"torch.compile needs PyTorch 2 (this is {torch.__version__})")
    if device == "cuda":
        # float32 rows are float32, as ours (no TF32), for matrix products and the patch conv alike
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        row["baselineDeviceMB"] = torch.cuda.memory_allocated() / 2 ** 20
    torch.manual_seed(settings["seed"])
    model = build(workload, settings).to(device)
    total = sum(p.numel() for p in model.parameters())

    c = workload["config"]
    B, S, C = workload["batch"], c["imageSize"], c["numClasses"]
    gen = torch.Generator().manual_seed(settings["seed"] + 104729 * B)
    images = torch.randn(B, 3, S, S, generator=gen).to(device)
    labels = torch.randint(0, C, (B,), generator=gen).to(device)

    def ctx():
        if dtype == "bfloat16":
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # what trains (inference rows count what RepAdapter would train, as lib/bench does)
    trainable = workload["trainable"] or "adapters"

    def trains(name):
        return trainable == "all" or name.startswith("head.") or (trainable == "adapters" and ".adapter_" in name)

    row["params"] = dict(total=total, trainable=sum(p.numel() for n, p in model.named_parameters() if trains(n)))
    fwd = torch.compile(model) if settings.get("compile") else model
    if workload["kind"] == "train":
        model.train()
        for name, p in model.named_parameters():
            p.requires_grad_(trains(name))  # frozen backbone
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                lr=settings["lr"], weight_decay=settings["weightDecay"])

        def step():
            opt.zero_grad(set_to_none=True)
            with ctx():
                loss = F.cross_entropy(fwd(images), labels)
            loss.backward()
            opt.step()
    else:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        def step():
            with torch.inference_mode(), ctx():
                fwd(images)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    warmup = settings["warmup"]
    if settings.get("compile"):  # the first step compiles; time it apart, then warm up as usual
        t0 = time.perf_counter()
        step()
        sync()
        row["compileSeconds"] = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prof = None
    if settings["profile"]:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        prof = profile(activities=acts, with_flops=True)
        prof.__enter__()
    samples = []
    for _ in range(settings["repeats"]):
        t0 = time.perf_counter()
        step()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    if prof is not None:
        prof.__exit__(None, None, None)
        n = settings["repeats"]
        ev = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        tot = sum(e.self_cpu_time_total for e in ev) or 1
        entries = []
        for e in ev:
            sec = e.self_cpu_time_total / 1e6
            fl = float(getattr(e, "flops", 0) or 0)
            entries.append(dict(op=e.key, seconds=sec / n, calls=e.count / n, flops=fl / n,
                                gflops=fl / sec / 1e9 if sec > 0 and fl > 0 else 0,
                                share=e.self_cpu_time_total / tot))
        row["profile"] = sorted(entries, key=lambda e: -e["seconds"])
    row["samplesMs"] = samples
    row["stepMs"] = spread(samples)
    row["imagesPerSec"] = B * 1000 / row["stepMs"]["median"]
    row["peakRssMB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if device == "cuda":
        row["peakDeviceMB"] = torch.cuda.max_memory_allocated() / 2 ** 20 - row["baselineDeviceMB"]
    return row


def worker_main():
    req = json.loads(sys.stdin.read())
    try:
        row = run_workload(req["workload"], req["settings"])
    except Exception as e:  # reported as the row's error
        row = dict(req["workload"], status="error", note=f"{type(e).__name__}: {e}")
    sys.stdout.write("\nRESULT " + json.dumps(row) + "\n")
    sys.stdout.flush()


def run_in_process(workload, settings):
    try:
        row = run_workload(workload, settings)
    except Exception as e:  # reported as the row's error, as a worker would
        row = dict(workload, status="error", note=f"{type(e).__name__}: {e}")
    gc.collect()  # the row's model, optimizer and inputs go before the next row's baseline
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    return row


def run_child(workload, settings, env, timeout=None):
    req = json.dumps(dict(workload=workload, settings=settings))
    timeout = timeout or settings.get("timeout") or None
    try:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"], input=req,
                           capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(workload, status="error", note=f"timed out after {timeout} s")
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = " ".join((p.stderr or p.stdout).strip().splitlines()[-3:])[-600:]
    why = "killed (SIGKILL: out of memory?)" if p.returncode == -9 else f"the worker exited with {p.returncode}"
    return dict(workload, status="error", note=f"{why}: {tail}" if tail else why)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def fmt(v, digits=3):
    if v is None or not math.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    dec = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:.{min(dec, 6)}f}"


def markdown(report):
    s = report["settings"]
    lines = [f"# Benchmark: {report['implementation']}", "",
             f"PyTorch on {s['device']}, {s['dtype']}; warm-up {s['warmup']}, repeats {s['repeats']}; "
             f"training step = zero_grad + forward + backward + AdamW (lr {s['lr']}, weight decay "
             f"{s['weightDecay']}); adapters hidden {s['adapter']['hidden']}, groups {s['adapter']['groups']}, "
             f"scale {s['adapter']['scale']}, dropout {s['adapter']['dropout']}.", "",
             "Host: " + ", ".join(f"{k} {v}" for k, v in report["host"].items() if v not in (None, "")) + ".", ""]
    lines += [f"- {n}" for n in report["notes"]] + [""]
    gpu = s["device"] == "cuda"  # device memory and compile time
    by_dtype = any("dtype" in r for r in report["rows"])  # --dtypes: one row per dtype
    head = ["method", "model", "batch"] + (["dtype"] if by_dtype else []) + [
        "ms/step (median)", "min – max", "IQR", "images/s", "peak RSS (MB)"]
    head += ["peak device (MB)", "compile (s)"] if gpu else []
    lines.append("| " + " | ".join(head + ["status"]) + " |")
    lines.append("| --- | --- | ---: |" + (" --- |" if by_dtype else "") +
                 " ---: |" * (len(head) - (4 if by_dtype else 3)) + " --- |")
    for r in report["rows"]:
        st = r.get("stepMs")
        status = r["status"] + (f": {r['note']}" if r.get("note") else "")
        cells = [r["method"], r["model"], str(r["batch"])] + ([r.get("dtype", s["dtype"])] if by_dtype else []) + [
            fmt(st and st["median"]),
            f"{fmt(st['min'])} – {fmt(st['max'])}" if st else "–", fmt(st and st["iqr"]),
            fmt(r.get("imagesPerSec")), f"{r['peakRssMB']:.0f}" if r.get("peakRssMB") else "–"]
        if gpu:
            cells += [f"{r['peakDeviceMB']:.0f}" if r.get("peakDeviceMB") is not None else "–",
                      f"{r['compileSeconds']:.1f}" if r.get("compileSeconds") is not None else "–"]
        lines.append("| " + " | ".join(cells + [status.replace("|", "\\|").replace("\n", " ")]) + " |")
    return "\n".join(lines) + "\n"


def blas_info():
    """The BLAS library torch actually loaded (Debian's torch says only "generic")."""
    try:
        with open("/proc/self/maps") as f:
            libs = {os.path.realpath(l.split()[-1]) for l in f if "blas" in l.lower() and ".so" in l}
    except OSError:
        return None
    names = sorted(os.path.basename(p) for p in libs)
    return ", ".join(names) or None


def matmul_ceiling(device):
    """TFLOP/s of one large bf16 matrix product on random data (METHOD: measure the ceiling)."""
    import torch
    n = 8192 if device == "cuda" else 512
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a = torch.randn(n, n, device=device).to(torch.bfloat16)
    b = torch.randn(n, n, device=device).to(torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    sec = time.perf_counter() - t0
    del a, b
    return dict(n=n, tflops=2 * n ** 3 * reps / sec / 1e12)


def write_json(path, report):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def parse_args(argv):
    p = argparse.ArgumentParser(description="PyTorch + timm side of the repadapter benchmark "
                                            "(writes theirs.json in lib/bench's schema).")
    p.add_argument("--plan", help="plan.json written by lib/bench (overrides the workload options)")
    p.add_argument("--out", default="results", help="theirs.json path, or a results root (then <root>/<timestamp>/theirs.json)")
    p.add_argument("--model", default=DEFAULTS["model"])
    p.add_argument("--config", help="custom architecture as JSON (imageSize, patchSize, width, depth, heads, mlpRatio|mlpHidden)")
    p.add_argument("--name", default="custom", help="name of the custom config")
    p.add_argument("--sizes", help="model-size sweep: tiny,small,base,...")
    p.add_argument("--classes", type=int, default=DEFAULTS["num_classes"])
    p.add_argument("--methods", help="subset of " + ",".join(METHODS))
    p.add_argument("--placements", help="attn,block")
    p.add_argument("--batch", help="training batch sizes (default 8,32)")
    p.add_argument("--infer-batch", help="inference batch sizes (default 1,32)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "fp32", "bf16", "bfloat16"],
                   help="bf16: torch.autocast(bfloat16)")
    p.add_argument("--dtypes", help="one row per dtype (float32,bf16), ids ending in /f32, /bf16 (the GPU mode)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (PyTorch 2)")
    p.add_argument("--in-process", action="store_true", help="run every row in this process")
    p.add_argument("--deadline", type=float, default=0, help="seconds for the whole run (0: none)")
    p.add_argument("--measure-ceiling", action="store_true",
                   help="time a large bf16 matrix product first (host.bf16MatmulTflops)")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"])
    p.add_argument("--repeats", type=int, default=DEFAULTS["repeats"])
    p.add_argument("--profile", action="store_true", help="per-op profile (torch.profiler)")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--timeout", type=float, default=DEFAULTS["timeout"], help="seconds per workload (0: none)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    started = time.time()
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.worker:
        worker_main()
        return 0
    try:
        import torch
        import timm
    except ImportError as e:
        print(f"SKIP: the PyTorch benchmark cannot run with {sys.executable}: {e}.\n{INSTRUCTIONS}")
        return 0

    if a.plan:
        with open(a.plan) as f:
            plan = json.load(f)
        if plan.get("schema") != SCHEMA:
            raise SystemExit(f"{a.plan}: schema {plan.get('schema')!r}, expected {SCHEMA}")
    else:
        plan = make_plan(a)
    settings = dict(plan["settings"], optimizer="adamw")
    if a.out.endswith(".json"):
        out = a.out
    else:
        stamp = datetime.datetime.utcnow().strftime("%Y-%m-%dT%H-%M-%SZ")
        out = os.path.join(a.out, stamp, "theirs.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    host = dict(cpu=platform.processor() or None, cpuCount=os.cpu_count(),
                platform=f"{platform.system()} {platform.release()}", arch=platform.machine(),
                python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                blas=blas_info(), threads=os.cpu_count(), OMP_WAIT_POLICY=env["OMP_WAIT_POLICY"],
                OMP_NUM_THREADS=env.get("OMP_NUM_THREADS"))
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            if m:
                host["cpu"] = m.group(1).strip()
        with open("/proc/meminfo") as f:
            host["totalMemMB"] = round(int(re.search(r"MemTotal:\s*(\d+)", f.read()).group(1)) / 1024)
    except (OSError, AttributeError):
        pass
    notes = [
        "peak RSS = resource.getrusage(RUSAGE_SELF).ru_maxrss of the workload's own process (Python, torch "
        "and timm included); baselineRssMB is the process after importing them, before the model was made",
        "timm VisionTransformer + official RepAdapter modules; folded = the plain timm ViT with folded weights; "
        "frozen backbone via requires_grad_(False); torch.inference_mode for inference; "
        f"torch.set_num_threads({os.cpu_count()}); OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}",
    ]
    if a.device == "cuda" and torch.cuda.is_available():
        host.update(gpu=torch.cuda.get_device_name(0), cudaVersion=torch.version.cuda,
                    gpuMemoryMB=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 20))
        notes.append("CUDA: TF32 off (torch.backends.cuda.matmul and cudnn allow_tf32 = False); images and labels "
                     "on the device before timing; step timed with torch.cuda.synchronize; peakDeviceMB = "
                     "torch.cuda.max_memory_allocated over the timed steps less the memory allocated before the model")
    if a.measure_ceiling:
        try:
            host["bf16Matmul"] = matmul_ceiling(a.device)
            log(f"bf16 matrix product {host['bf16Matmul']['n']}³: {host['bf16Matmul']['tflops']:.1f} TFLOP/s")
        except Exception as e:  # a ceiling is a lead, not a row: report and go on
            host["bf16Matmul"] = dict(error=f"{type(e).__name__}: {e}")
        gc.collect()
        if a.device == "cuda":
            torch.cuda.empty_cache()
    if settings.get("compile"):
        notes.append("torch.compile(model), default mode; the first step (compileSeconds) is not timed")
    if a.in_process:
        notes.append("every row ran in one process (--in-process): peak RSS is the process's")
    if host["blas"] and "openblas" not in host["blas"] and "mkl" not in host["blas"]:
        notes.append(f"torch loaded a reference BLAS ({host['blas']}): install libopenblas0-pthread, "
                     "or every matrix product is many times slower")
    if any(w.get("dtype", settings["dtype"]) == "bfloat16" for w in plan["workloads"]):
        notes.append("bfloat16 = torch.autocast(bfloat16) over float32 weights")
    if settings.get("profile"):
        notes.append("per-op profiling (torch.profiler) was on: it adds overhead to the step times")

    rows = []
    wl = plan["workloads"]
    report = dict(schema=SCHEMA, implementation="pytorch-compile" if settings.get("compile") else "pytorch",
                  createdAt=datetime.datetime.utcnow().isoformat(timespec="milliseconds") + "Z",
                  host=host, settings=settings, notes=notes, rows=rows)
    for i, w in enumerate(wl):
        left = a.deadline - (time.time() - started) if a.deadline else None
        if left is not None and left < 5:
            row = dict(w, status="skipped", note=f"the run's {a.deadline:.0f} s deadline was reached")
        elif a.in_process:
            row = run_in_process(w, settings)
        else:
            timeout = settings.get("timeout") or None
            if left is not None:
                timeout = min(timeout, left) if timeout else left
            row = run_child(w, settings, env, timeout)
        rows.append(row)
        write_json(out, report)  # after every row: a run cut short keeps what it measured
        tag = f"[{i + 1}/{len(wl)}] {w['id']}"
        if row["status"] == "ok":
            extra = f", peak device {row['peakDeviceMB']:.0f} MB" if row.get("peakDeviceMB") is not None else ""
            extra += f", compiled in {row['compileSeconds']:.1f} s" if row.get("compileSeconds") is not None else ""
            log(f"{tag}: {row['stepMs']['median']:.1f} ms/step, {row['imagesPerSec']:.1f} images/s, "
                f"peak RSS {row['peakRssMB']:.0f} MB{extra}")
        else:
            log(f"{tag}: {row['status']} ({row.get('note', '')})")
    write_json(out, report)
    md = markdown(report)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(md)
    print(md)
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
