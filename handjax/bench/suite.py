"""Speed figures, always measured side by side in one process on the current machine.

    python -m handjax.bench protocol   # the study's protocol: handjax vs the plain way
    python -m handjax.bench steps      # train-step images/s and GFLOP/s per conv mode
    python -m handjax.bench folds      # phase-1/2 epochs under vmap, lax.map, a fold loop
    python -m handjax.bench all        # all three (``--quick`` for tiny settings)
    python -m handjax.bench scaling    # wall, share not training, s/photo, peak RSS, N to 20,000
    python -m handjax.bench protocol --keras   # + the protocol written plainly in Keras 3
    python -m handjax.bench protocol --torch   # + as a plain PyTorch script (bf16 autocast)
    python -m handjax.bench processes --keras  # first run, Keras, second run: fresh processes
    python -m handjax.bench gpu-study  # the 12-cell study at 224 px on an accelerator, MFU
    python -m handjax.bench serve      # the web server under 1, 4, 16 clients vs offline

``protocol`` (:mod:`handjax.bench.protocol`) runs the same protocol (model, input size,
images, epochs, folds, SVM) as handjax's fold program (shared frozen-layer cache, compiled
epochs, tuned convs on CPU) twice, with JAX's compilation cache first empty, then filled
("handjax-warm": a rerun), and as a plain reference inside handjax that works the way the
study's Keras code did (the frozen base recomputed at every step, ``lax.conv``, the folds
one after another; ``--no-plain`` leaves it out). Both train on the same batches, so their
results agree; the ratio of wall times is the speed-up.
With ``--keras`` (also under ``all``) a third run does the same protocol on the same data the
way the study's code did, in Keras 3 on JAX (``pip install -e '.[test]'``): per fold a fresh
``keras.applications`` model, ``fit`` with the base frozen then its top block(s) unfrozen,
``predict``, and an SVM on the pooled features. Its results differ from handjax's (its own
initialisation and random numbers); only its wall time is compared. ``--torch`` adds the
same protocol as a plain PyTorch script (:mod:`handjax.bench.torch_peer`: torchvision's VGG,
``channels_last``, ``torch.autocast`` bfloat16; ``pip install -e '.[torch]'``).
GFLOP/s figures count the convolutions and matrix products in the step's jaxpr
(``handjax.train.flops.jaxpr_flops``) and are compared with a matmul peak measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from handjax.models import backbones, keras_weights
from handjax.models.kernels import convs
from handjax import console
from handjax.bench.keras_peer import peak_rss_gib
from handjax.bench.protocol import bench_protocol, bench_repeats, check_peers, protocol_configs
from handjax.train.flops import jaxpr_flops

# handjax.train is imported inside the functions that need it: ``steps`` needs only the
# backbones, and so runs where tensorflow-datasets (imported by the data pipeline) is not
# installed, e.g. a GPU box's stock JAX image.


def _best_time(fn, *args, repeat: int = 3) -> float:
    """Best of ``repeat`` timed runs after a compiling one: the tuner's own timer."""
    from handjax.models.kernels.tuning import best_seconds
    return best_seconds(fn, args, repeats=repeat)


def matmul_peak(n: int = 2048, dtype=jnp.float32) -> float:
    """GFLOP/s of one jitted n x n matmul of ``dtype`` operands accumulated in float32 (the
    form handjax's convs use): the machine's practical peak."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    fn = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    return 2 * n**3 / _best_time(fn, a, a) / 1e9


# --------------------------------------------------------------------------- steps
def full_train_step(name: str, conv_impl: str, size: int, batch: int, dtype=jnp.float32,
                    plan=None):
    """A compiled whole-network fine-tune step (every layer trains) and its inputs; "auto"
    runs ``plan`` (a ConvPlan; None: the table's choices)."""
    module, variables = keras_weights.load(name, None, dtype=dtype, conv_impl=conv_impl)
    module = module.clone(conv_plan=plan)
    head = jax.random.normal(jax.random.key(1), (module_channels(module, variables, size),
                                                 3)) * 0.01
    params = {"backbone": variables["params"], "head": head}
    stats = variables.get("batch_stats", {})
    tx = optax.sgd(1e-3)
    x = jax.random.uniform(jax.random.key(2), (batch, size, size, 3), jnp.float32, 0, 255)
    y = jnp.arange(batch) % 3

    def step(params, opt_state, stats, x, y):
        def loss_fn(p):
            feats, upd = module.apply({"params": p["backbone"], "batch_stats": stats},
                                      backbones.preprocess(name, x).astype(dtype),
                                      train=True, mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.key(3)})  # EfficientNetV2's drop connect
            logits = jnp.mean(feats.astype(jnp.float32), axis=(1, 2)) @ p["head"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, upd.get("batch_stats", stats), loss

    args = (params, tx.init(params), stats, x, y)
    t = time.perf_counter()
    compiled = jax.jit(step).lower(*args).compile()
    return compiled, args, time.perf_counter() - t, jaxpr_flops(jax.make_jaxpr(step)(*args))


def module_channels(module, variables, size: int) -> int:
    x = jnp.zeros((1, size, size, 3))
    return convs.eval_shape(lambda: module.apply(variables, x, train=False)).shape[-1]


STEP_IMPLS = ("xla", "im2col", "mmgrad", "winograd", "matmul", "table", "auto")
STEPS_TUNE_BUDGET_S = 600.0   # 'steps' tunes every layer of the network before timing "auto"


def tune_whole_network(name: str, size: int, batch: int, dtype):
    """Tune every conv of ``name`` for training (the 'steps' benchmark trains all layers),
    reading what this machine's cache already holds; returns the seconds spent and the
    plan "auto" then runs."""
    from handjax.models.kernels import tuning
    t = time.perf_counter()
    layers = [l for l in tuning.model_layers(name, dtype, size, None) if l["purpose"] == "train"]
    tuning.tune_layers(layers, batch, budget_s=STEPS_TUNE_BUDGET_S)
    return time.perf_counter() - t, tuning.plan_for(layers, jnp.dtype(dtype).name)

# Dense bf16 tensor-core peaks (TFLOP/s, vendor datasheets) by device_kind substring, for MFU.
BF16_PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0),
                    ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("V100", 125.0))


def bf16_peak_tflops(device_kind: str) -> float | None:
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return tflops
    return None


def bench_steps(models, size: int, batch: int, peak: float, dtype=jnp.float32, rounds: int = 3,
                peak_tflops: float | None = None, impls=STEP_IMPLS) -> list[dict]:
    """Whole-network train step per conv implementation. All variants are compiled first,
    then timed in interleaved rounds (best of each), so machine noise hits them alike.

    GFLOP/s use one FLOP count for every variant (:func:`jaxpr_flops` of the ``lax.conv``
    step: the model's work, not each variant's bookkeeping). On an accelerator with a known
    (or given) bf16 peak, MFU = that work per second / the peak.
    """
    rows = []
    kind = jax.devices()[0].device_kind
    peak_tflops = peak_tflops or (bf16_peak_tflops(kind) if jax.default_backend() != "cpu" else None)
    impls = ("xla",) + tuple(i for i in impls if i != "xla")  # xla: the FLOP count
    for name in models:
        plan = None
        if "auto" in impls and jax.default_backend() == "cpu":
            sec, plan = tune_whole_network(name, size, batch, dtype)
            print(f"  {name:12s} conv tuning for 'auto' (every layer trains): {sec:.1f} s",
                  flush=True)
        steps = {impl: full_train_step(name, impl, size, batch, dtype, plan) for impl in impls}
        flops = steps["xla"][3]
        best = dict.fromkeys(impls, float("inf"))
        for _ in range(rounds):
            for impl, (compiled, args, _, _) in steps.items():
                best[impl] = min(best[impl], _best_time(compiled, *args, repeat=1))
        for impl, (_, _, compile_s, _) in steps.items():
            sec = best[impl]
            row = {"model": name, "conv": impl, "size": size, "batch": batch,
                   "dtype": jnp.dtype(dtype).name, "step_s": sec, "images_per_s": batch / sec,
                   "gflops": flops / sec / 1e9, "peak_frac": flops / sec / 1e9 / peak,
                   "compile_s": compile_s, "speedup_vs_xla": best["xla"] / sec}
            mfu = ""
            if peak_tflops:
                row["mfu"] = flops / sec / 1e12 / peak_tflops
                mfu = f"  MFU {100 * row['mfu']:4.1f}% of {peak_tflops:.0f} TFLOP/s bf16"
            rows.append(row)
            print(f"  {name:12s} {impl:7s} {batch / sec:8.1f} img/s  {flops / sec / 1e9:8.1f} "
                  f"GFLOP/s ({100 * flops / sec / 1e9 / peak:5.1f}% of matmul peak)  step "
                  f"{sec * 1e3:7.1f} ms  compile {compile_s:5.1f} s  {best['xla'] / sec:4.2f}x xla"
                  f"{mfu}", flush=True)
        if "auto" in best and "table" in best:
            print(f"  {name:12s} auto (measured choices) / table step speed: "
                  f"{best['table'] / best['auto']:.2f}x", flush=True)
        del steps
    return rows


def bench_dtypes(models, size: int, batch: int, peaks: dict, impl: str = "auto",
                 rounds: int = 3) -> list[dict]:
    """The same train step (``impl`` convs) in float32 and in bfloat16 compute, compiled
    first and timed in interleaved rounds; ``peaks``: matmul GFLOP/s per dtype name, measured
    in the same run. Prints each and the bf16 / float32 step-speed ratio."""
    rows = []
    for name in models:
        steps = {dt: full_train_step(name, impl, size, batch, jnp.dtype(dt)) for dt in peaks}
        flops = steps["float32"][3]  # the model's work, counted once
        best = dict.fromkeys(steps, float("inf"))
        for _ in range(rounds):
            for dt, (compiled, args, _, _) in steps.items():
                best[dt] = min(best[dt], _best_time(compiled, *args, repeat=1))
        for dt, sec in best.items():
            rows.append({"model": name, "conv": impl, "dtype": dt, "size": size, "batch": batch,
                         "step_s": sec, "gflops": flops / sec / 1e9,
                         "peak_frac": flops / sec / 1e9 / peaks[dt]})
            print(f"  {name:12s} {impl:7s} {dt:8s} {batch / sec:8.1f} img/s  "
                  f"{flops / sec / 1e9:8.1f} GFLOP/s ({100 * rows[-1]['peak_frac']:5.1f}% of the "
                  f"{dt} matmul peak)  step {sec * 1e3:7.1f} ms", flush=True)
        ratio = best["float32"] / best["bfloat16"]
        rows[-1]["speedup_vs_float32"] = ratio
        print(f"  {name:12s} bfloat16 / float32 step speed: {ratio:.2f}x  (matmul peaks: "
              f"{peaks['bfloat16'] / peaks['float32']:.2f}x)", flush=True)
        del steps
    return rows


# --------------------------------------------------------------------------- folds
def bench_folds(spec) -> list[dict]:
    """Phase-1 and phase-2 epochs of the fold program under each fold mapping."""
    from handjax.train import features, fold_program as folds
    from handjax.data.cohort import load_cohort
    cohort = load_cohort(spec.data, spec.seed, spec.n_folds)
    prep = features.prepare(spec, cohort)
    labels = jnp.asarray(cohort.labels)
    rows = []
    for phase in (1, 2):
        inputs = prep.inputs1 if phase == 1 else prep.inputs2
        batches = folds.epoch_batches(cohort.train_sets,
                                      batch_size=spec.train.batch_size,
                                      n_views=inputs.shape[0], seed=0, phase=phase, epoch=0)
        for kind in ("vmap", "map", "loop"):
            states = folds.states_for(phase, prep.fold_model, spec)
            fn = jax.jit(lambda s, x, y, b, k, kind=kind: folds.epoch_fn(
                s, x, y, b, k, fold_map=kind))
            t = time.perf_counter()
            compiled = fn.lower(states, inputs, labels, batches, jax.random.key(0)).compile()
            compile_s = time.perf_counter() - t
            sec = _best_time(lambda: compiled(states, inputs, labels, batches,
                                              jax.random.key(0)), repeat=2)
            steps = batches["idx"].shape[0]
            rows.append({"phase": phase, "fold_map": kind, "epoch_s": sec,
                         "step_ms": 1e3 * sec / steps, "compile_s": compile_s})
            print(f"  phase {phase}  {kind:5s} epoch {sec:7.3f} s  "
                  f"({1e3 * sec / steps:7.1f} ms per step of {spec.n_folds} folds)  "
                  f"compile {compile_s:5.1f} s", flush=True)
    return rows


# --------------------------------------------------------------------------- scaling
SCALING_SIZES = {"full": (150, 600, 2400, 10000, 20000), "quick": (30, 60, 120)}


def png_folder(n: int, size: int, seed: int = 0) -> Path:
    """An ImageFolder of ``n`` PNG photos (``n/3`` per class) of ``size`` px: the synthetic
    renderer's hands, written once under ``$HANDJAX_CACHE/bench/`` on every core. Photo i of
    a class is the same file in every folder (hard-linked from one pool), so the folders of
    several N share their photos and only the first pays for rendering."""
    from handjax.cache import cache_dir
    from handjax.data.records import CLASSES
    per_class = max(5, n // 3)
    base = cache_dir() / "bench" / f"scaling-png-{size}px-seed{seed}"
    folder = base / f"n{per_class * 3}"
    if (folder / ".complete").exists():
        return folder
    jobs = [(seed, label, i, size, base / "pool" / CLASSES[label] / f"hand{i:05d}.png")
            for label in range(len(CLASSES)) for i in range(per_class)]
    todo = [j for j in jobs if not j[-1].exists()]
    if todo:
        import concurrent.futures
        import multiprocessing
        for label in CLASSES:
            (base / "pool" / label).mkdir(parents=True, exist_ok=True)
        # Spawned, not forked: this process runs JAX's threads, which a fork would copy.
        with concurrent.futures.ProcessPoolExecutor(
                os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_png, todo, chunksize=64))
    for *_, src in jobs:
        dst = folder / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(src, dst)
    (folder / ".complete").touch()   # a hidden file: the folder scan skips it
    return folder


def _write_png(job) -> None:
    """One synthetic hand (``synthetic_hands``' photo i of its class, drawn at ``size``)
    as a PNG: written to a temporary name, then renamed, so a half-written file never
    counts."""
    from PIL import Image

    from handjax.data.synthetic import photo
    seed, label, i, size, path = job
    image, _ = photo(seed, label, i, size)
    tmp = path.with_name(path.name + ".part")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)


def scaling_spec(n: int, size: int, epochs: str, model: str, spill: bool,
                 root: str | None = None):
    """The protocol at ``n`` photos (``n/3`` per class): synthetic hands, or the PNG folder
    ``root``; ``spill``: the frozen-feature cache, photos and views on disk (a zero
    budget), else in RAM."""
    from handjax import config as configs
    c = configs.cell(model, "categorical")
    c.model.weights = "none"
    c.data.image_size, c.data.n_per_class, c.data.views = size, max(2, n // 3), 2
    if root:
        c.data.root = str(root)
    c.train.epochs1, c.train.epochs2 = (int(v) for v in epochs.split("+"))
    c.train.cache_budget_gb = 0.0 if spill else 1e6
    return configs.parse_run(c)


def scaling_child(n: int, size: int, epochs: str, model: str, spill: bool,
                  root: str | None = None) -> dict:
    """One scaling point, in this (fresh) process: wall time, the share of it not spent in
    training epochs, peak RSS, timing, cache size."""
    from handjax.train import run as train
    with tempfile.TemporaryDirectory(prefix="handjax-scaling-") as tmp:
        t = time.perf_counter()
        results = train.run(scaling_spec(n, size, epochs, model, spill, root),
                            Path(tmp) / "run")
        wall = time.perf_counter() - t
        timing = json.loads((Path(tmp) / "run" / "timing.json").read_text())
    train_s = timing.get("run_s", 0.0)   # the epochs and their scoring (train/fit.py)
    return {"n": results["data"]["n"], "spill": spill, "source": "png" if root else "synthetic",
            "wall_s": wall, "not_training": 1 - train_s / wall,
            "peak_rss_gib": peak_rss_gib(), "cache_mib": results["cache_bytes"] / 2**20,
            "train_s": train_s, "tune_s": timing.get("tune_s", 0.0),
            "prepare_s": timing.get("prepare_s", 0.0), "fit_s": timing.get("fit_s", 0.0),
            "evaluate_s": timing.get("evaluate_s", 0.0),
            "accuracy": results["decisions"]["cnn"]["mean"]["accuracy"]}


def scaling_ratios(rows: list[dict]) -> list[dict]:
    """Each row with ``s_per_photo`` and ``per_photo_ratio`` (time per photo relative to the
    smallest N of the same spill setting), ``rss_vs_ram`` (peak RSS relative to the in-RAM
    run of the same N, where there is one) and ``rss_vs_first`` (relative to the smallest N
    of the same spill setting)."""
    out = []
    for r in rows:
        same = [q for q in rows if q["spill"] == r["spill"]]
        base = min(same, key=lambda q: q["n"])
        ram = [q for q in rows if q["n"] == r["n"] and not q["spill"]]
        out.append(dict(r, s_per_photo=r["wall_s"] / r["n"],
                        per_photo_ratio=(r["wall_s"] / r["n"]) / (base["wall_s"] / base["n"]),
                        rss_vs_ram=r["peak_rss_gib"] / ram[0]["peak_rss_gib"] if ram else None,
                        rss_vs_first=r["peak_rss_gib"] / base["peak_rss_gib"]))
    return out


def scaling_table(rows: list[dict]) -> str:
    """A markdown table of :func:`scaling_ratios` rows."""
    lines = ["| N photos | cache | cache MiB | wall s | train s | not training | s/photo "
             "| x smallest N | peak RSS GiB | RSS x smallest N | RSS vs RAM run |",
             "|" + "---|" * 11]
    for r in rows:
        rss = "" if r["rss_vs_ram"] is None else f"{r['rss_vs_ram']:.2f}"
        lines.append(f"| {r['n']} | {'disk' if r['spill'] else 'RAM'} | {r['cache_mib']:.1f} "
                     f"| {r['wall_s']:.1f} | {r['train_s']:.1f} "
                     f"| {100 * r.get('not_training', 0.0):.0f}% | {r['s_per_photo']:.4f} "
                     f"| {r['per_photo_ratio']:.2f} | {r['peak_rss_gib']:.2f} "
                     f"| {r.get('rss_vs_first', 1.0):.2f} | {rss} |")
    return "\n".join(lines)


def scaling_main(argv) -> int:
    """``python -m handjax.bench scaling [--quick]``: each (N, cache in RAM / on disk) in a
    fresh process, so that peak RSS is that run's own."""
    import subprocess
    p = argparse.ArgumentParser(prog="python -m handjax.bench scaling")
    p.add_argument("--quick", action="store_true", help="N = 30, 60, 120 at 32 px, 1+1 epochs")
    p.add_argument("--sizes", type=console.int_list(15),
                   help="comma list of N (default 150,600,2400,10000,20000)")
    p.add_argument("--model", default="vgg19", choices=backbones.NAMES)
    p.add_argument("--image-size", type=console.int_at_least(32, 1024), default=64)
    p.add_argument("--epochs", type=console.epochs, default="2+1")
    p.add_argument("--source", default="png", choices=("png", "synthetic"),
                   help="png (default): a folder of PNG photos written once into the cache "
                        "and decoded by the folder loader; synthetic: the embedded renderer")
    p.add_argument("--cache", default="both", choices=("both", "ram", "disk"),
                   help="frozen features, photos and views in RAM, on disk (a zero budget), "
                        "or both, one run each")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--spill", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    if a.quick:
        a.model, a.image_size, a.epochs = "vgg16", 32, "1+1"
    if a.child is not None:
        print("SCALING " + json.dumps(scaling_child(a.child, a.image_size, a.epochs, a.model,
                                                      a.spill, a.root)), flush=True)
        return 0
    sizes = a.sizes or SCALING_SIZES["quick" if a.quick else "full"]
    spills = {"both": (False, True), "ram": (False,), "disk": (True,)}[a.cache]
    rows = []
    for n in sizes:
        root = None
        if a.source == "png":
            t = time.perf_counter()
            root = png_folder(n, a.image_size)
            print(f"  N={n}: photos in {root} ({time.perf_counter() - t:.1f} s to write or "
                  "find; not in the runs' wall)", flush=True)
        for spill in spills:
            cmd = [sys.executable, "-m", "handjax.bench", "scaling", "--child", str(n),
                   "--model", a.model, "--image-size", str(a.image_size), "--epochs", a.epochs]
            cmd += ["--root", str(root)] if root else []
            out = subprocess.run(cmd + (["--spill"] if spill else []), capture_output=True,
                                 text=True, check=False)
            lines = [l for l in out.stdout.splitlines() if l.startswith("SCALING ")]
            if out.returncode or not lines:
                raise SystemExit(f"scaling run N={n} failed:\n{out.stderr[-2000:]}")
            rows.append(json.loads(lines[-1][len("SCALING "):]))
            r = rows[-1]
            print(f"  N={n} {'disk' if spill else 'RAM '}: {r['wall_s']:.1f} s, "
                  f"{100 * r['not_training']:.0f}% not training, "
                  f"{r['wall_s'] / r['n']:.4f} s per photo, peak RSS {r['peak_rss_gib']:.2f} GiB "
                  f"(tune {r['tune_s']:.1f} s, prepare {r['prepare_s']:.1f} s, epochs "
                  f"{r['train_s']:.1f} s of fit {r['fit_s']:.1f} s, evaluate "
                  f"{r['evaluate_s']:.1f} s)", flush=True)
    rows = scaling_ratios(rows)
    print(f"\nscaling: {a.model} {a.image_size} px, {a.epochs} epochs, 5 folds + SVM, "
          f"{'PNG folder' if a.source == 'png' else 'synthetic renderer'}\n")
    print(scaling_table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["scaling"]:   # its own flags; each point in a fresh process
        return scaling_main(argv[1:])
    if argv[:1] == ["serve"]:     # its own flags; the server under load beside predict
        from handjax.bench import serve as bench_serve
        return bench_serve.main(argv[1:])
    if argv[:1] == ["processes"]:  # its own flags; each run a fresh process
        from handjax.bench import processes
        return processes.main(argv[1:])
    if argv[:1] == ["gpu-study"]:  # its own flags; refuses on a CPU
        from handjax.bench import gpu as bench_gpu
        return bench_gpu.main(argv[1:], peak_lookup=bf16_peak_tflops)
    p = argparse.ArgumentParser(prog="python -m handjax.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="all",
                   choices=("protocol", "steps", "folds", "repeats", "all"))
    p.add_argument("--model", default="vgg19", choices=backbones.NAMES)
    p.add_argument("--models", default="vgg19", help="comma list for 'steps'")
    p.add_argument("--image-size", type=console.int_at_least(32, 1024), default=112)
    p.add_argument("--n-per-class", type=console.int_at_least(2), default=50)
    p.add_argument("--epochs", type=console.epochs, default="2+1",
                   help="phase-1+phase-2 epochs")
    p.add_argument("--folds", type=console.int_at_least(2, 20), default=5)
    p.add_argument("--batch", type=console.int_at_least(1), default=16)
    p.add_argument("--weights", default="none", help="'none' (random) or 'imagenet'")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype of the 'steps' train step (parameters stay float32); "
                        "bfloat16 also adds a bfloat16 handjax run to 'protocol'")
    p.add_argument("--convs", default=",".join(STEP_IMPLS),
                   help="comma list of conv implementations for 'steps' (xla always runs)")
    p.add_argument("--peak-tflops", type=float,
                   help="accelerator bf16 peak for MFU (default: looked up by device kind)")
    p.add_argument("--quick", action="store_true", help="tiny settings (32 px, 30 images)")
    p.add_argument("--keras", action="store_true",
                   help="'protocol'/'all': also run the protocol written plainly in Keras 3")
    p.add_argument("--torch", action="store_true",
                   help="'protocol'/'all': also run the protocol as a plain PyTorch script "
                        "(torchvision, bf16 autocast; pip install -e '.[torch]')")
    p.add_argument("--no-plain", action="store_true",
                   help="'protocol': leave out the plain path (at 10+10 epochs as long as Keras)")
    p.add_argument("--repeats", type=console.int_at_least(2), default=3,
                   help="'repeats': R, measured against R = 1")
    p.add_argument("--json", help="also write the measurements to this file")
    a = p.parse_args(argv)
    peers = [k for k in ("keras", "torch") if getattr(a, k)]
    for peer in peers:
        if a.what not in ("protocol", "all"):
            p.error(f"--{peer} applies to 'protocol' and 'all'")
    check_peers(p, peers, a.model)   # fail now, not after the handjax runs
    impls = tuple(i for i in a.convs.split(",") if i)
    unknown = set(impls) - set(STEP_IMPLS)
    if unknown:
        p.error(f"--convs: unknown {', '.join(sorted(unknown))}; choose from "
                f"{','.join(STEP_IMPLS)}")
    if a.quick:
        a.image_size, a.n_per_class, a.batch = 32, 10, 8
    e1, e2 = (int(v) for v in a.epochs.split("+"))
    print(f"handjax bench on {jax.devices()[0].device_kind} ({jax.default_backend()}, "
          f"{jax.device_count()} device(s)), jax {jax.__version__}", flush=True)
    peak = matmul_peak()
    print(f"matmul peak (float32, 2048^3, jitted): {peak:.1f} GFLOP/s", flush=True)
    report = {"device": jax.devices()[0].device_kind, "matmul_peak_gflops": peak}
    if jax.default_backend() != "cpu":
        # An accelerator's train steps are held against its measured bf16 matrix rate.
        peak = report["bf16_matmul_peak_gflops"] = matmul_peak(8192, jnp.bfloat16)
        print(f"matmul peak (bfloat16, 8192^3, jitted): {peak / 1e3:.1f} TFLOP/s", flush=True)
    elif a.dtype == "bfloat16":
        report["bf16_matmul_peak_gflops"] = matmul_peak(2048, jnp.bfloat16)
        print(f"matmul peak (bfloat16, f32 accumulation, 2048^3, jitted): "
              f"{report['bf16_matmul_peak_gflops']:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="handjax-bench-") as tmp:
        if a.what in ("steps", "all"):
            print(f"\nwhole-network train step, {a.image_size} px, batch {a.batch}, {a.dtype}:")
            models = [m for m in a.models.split(",") if m]
            report["steps"] = bench_steps(models, a.image_size, a.batch, peak, jnp.dtype(a.dtype),
                                          peak_tflops=a.peak_tflops, impls=impls)
            if a.dtype == "bfloat16":
                print(f"\nbfloat16 against float32, the same step ('auto' convs), {a.image_size}"
                      f" px, batch {a.batch}:")
                peaks = {"float32": report["matmul_peak_gflops"],
                         "bfloat16": report["bf16_matmul_peak_gflops"]}
                report["dtypes"] = bench_dtypes(models, a.image_size, a.batch, peaks)
        if a.what in ("folds", "protocol", "repeats", "all"):
            specs = protocol_configs(a.model, a.image_size, a.n_per_class, e1, e2, a.folds,
                                     a.weights, a.batch)
        if a.what in ("folds", "all"):
            print(f"\nfold mapping, {a.model} {a.image_size} px, {a.folds} folds:")
            report["folds"] = bench_folds(specs["handjax"])
        if a.what == "repeats":
            print(f"\nrepeated cross-validation: {a.model} {a.image_size} px, "
                  f"{3 * a.n_per_class} synthetic images, {e1}+{e2} epochs, {a.folds} folds:")
            report["repeats"] = bench_repeats(specs["config"], a.repeats, Path(tmp))
        if a.what in ("protocol", "all"):
            print(f"\nprotocol: {a.model} {a.image_size} px, {3 * a.n_per_class} synthetic "
                  f"images, {e1}+{e2} epochs, {a.folds} folds + SVM, weights={a.weights}:")
            out = bench_protocol(specs, Path(tmp), keras=a.keras, torch=a.torch,
                                 bf16=a.dtype == "bfloat16", plain=not a.no_plain)
            report["protocol"] = {k: ({kk: vv for kk, vv in v.items() if kk != "results"}
                                      if isinstance(v, dict) else v) for k, v in out.items()}
    print(f"\npeak RSS of this process: {peak_rss_gib():.2f} GiB")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
