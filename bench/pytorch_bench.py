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
"""
import argparse
import datetime
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


def make_plan(a):
    dtype = {"bf16": "bfloat16", "bfloat16": "bfloat16"}.get(a.dtype, "float32")
    settings = dict(device=a.device, dtype=dtype, warmup=a.warmup, repeats=a.repeats,
                    profile=a.profile, numClasses=a.classes, adapter=dict(DEFAULTS["adapter"]),
                    optimizer="adamw", lr=a.lr, weightDecay=a.weight_decay, seed=a.seed,
                    timeout=a.timeout)
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
                workloads.append(dict(id=f"{method}/{name}/b{b}", method=method, kind=kind, model=name,
                                      config=config, placement=placement, trainable=trainable, batch=b))
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
    import contextlib

    import timm.models.vision_transformer  # noqa: F401  (imported before the baseline RSS)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count())
    row = dict(workload, status="ok", baselineRssMB=rss_now_mb())
    if workload["method"] == "infer-onnxruntime":
        return dict(row, status="skipped", note="onnxruntime-node runs on the Node side of the benchmark")
    device, dtype = settings["device"], settings["dtype"]
    if device == "cuda" and not torch.cuda.is_available():
        return dict(row, status="skipped", note="cuda: torch.cuda.is_available() is False")
    if device not in ("cpu", "cuda"):
        return dict(row, status="skipped", note=f"unknown device {device}")
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
    if workload["kind"] == "train":
        model.train()
        for name, p in model.named_parameters():
            p.requires_grad_(trains(name))  # frozen backbone
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                lr=settings["lr"], weight_decay=settings["weightDecay"])

        def step():
            opt.zero_grad(set_to_none=True)
            with ctx():
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
    else:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        def step():
            with torch.inference_mode(), ctx():
                model(images)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(settings["warmup"]):
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
        row["peakDeviceMB"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return row


def worker_main():
    req = json.loads(sys.stdin.read())
    try:
        row = run_workload(req["workload"], req["settings"])
    except Exception as e:  # reported as the row's error
        row = dict(req["workload"], status="error", note=f"{type(e).__name__}: {e}")
    sys.stdout.write("\nRESULT " + json.dumps(row) + "\n")
    sys.stdout.flush()


def run_child(workload, settings, env):
    req = json.dumps(dict(workload=workload, settings=settings))
    timeout = settings.get("timeout") or None
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
    lines.append("| method | model | batch | ms/step (median) | min – max | IQR | images/s | peak RSS (MB) | status |")
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in report["rows"]:
        st = r.get("stepMs")
        status = r["status"] + (f": {r['note']}" if r.get("note") else "")
        lines.append("| " + " | ".join([
            r["method"], r["model"], str(r["batch"]), fmt(st and st["median"]),
            f"{fmt(st['min'])} – {fmt(st['max'])}" if st else "–", fmt(st and st["iqr"]),
            fmt(r.get("imagesPerSec")), f"{r['peakRssMB']:.0f}" if r.get("peakRssMB") else "–",
            status.replace("|", "\\|").replace("\n", " ")]) + " |")
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
    if host["blas"] and "openblas" not in host["blas"] and "mkl" not in host["blas"]:
        notes.append(f"torch loaded a reference BLAS ({host['blas']}): install libopenblas0-pthread, "
                     "or every matrix product is many times slower")
    if settings["dtype"] == "bfloat16":
        notes.append("bfloat16 = torch.autocast(bfloat16) over float32 weights")
    if settings.get("profile"):
        notes.append("per-op profiling (torch.profiler) was on: it adds overhead to the step times")

    rows = []
    wl = plan["workloads"]
    for i, w in enumerate(wl):
        row = run_child(w, settings, env)
        rows.append(row)
        tag = f"[{i + 1}/{len(wl)}] {w['id']}"
        if row["status"] == "ok":
            log(f"{tag}: {row['stepMs']['median']:.1f} ms/step, {row['imagesPerSec']:.1f} images/s, "
                f"peak RSS {row['peakRssMB']:.0f} MB")
        else:
            log(f"{tag}: {row['status']} ({row.get('note', '')})")
    report = dict(schema=SCHEMA, implementation="pytorch",
                  createdAt=datetime.datetime.utcnow().isoformat(timespec="milliseconds") + "Z",
                  host=host, settings=settings, notes=notes, rows=rows)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    md = markdown(report)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(md)
    print(md)
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
