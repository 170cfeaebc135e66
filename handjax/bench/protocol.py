"""``python -m handjax.bench protocol`` (and ``repeats``): the study's protocol end to end,
handjax against the plain way (and the Keras 3 reference, :mod:`handjax.bench.keras_peer`), in one
process after a shared warm-up, so that the ratios are measured side by side.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from handjax.bench.keras_peer import peak_rss_gib


def protocol_configs(model: str, size: int, n_per_class: int, epochs1: int, epochs2: int,
                     n_folds: int, weights: str, batch: int = 16, *, views: int = 2,
                     root: str | None = None):
    """The specs of the protocol comparison: handjax's way, the plain way, and handjax in
    bfloat16 compute (``{"handjax": ..., "plain": ..., "handjax-bf16": ...}``), and the
    handjax ConfigDict they come from (``"config"``). ``root``: a folder of photos instead
    of the synthetic ones."""
    from handjax import config as configs
    fast = configs.cell(model, "categorical")
    fast.model.weights = weights
    fast.data.image_size = size
    fast.data.n_per_class = n_per_class
    fast.data.views = views
    if root:
        fast.data.root = root
    fast.n_folds = n_folds
    fast.train.epochs1, fast.train.epochs2 = epochs1, epochs2
    fast.train.batch_size = batch
    fast.train.inner_val = 0.0       # the study's protocol: whole training folds
    plain = fast.copy_and_resolve_references()
    plain.train.mode = "plain"       # folds and steps one after another, from Python
    plain.model.conv_impl = "xla"
    plain.train.fold_map = "map"     # its evaluation, too, one fold after another
    half = fast.copy_and_resolve_references()
    half.model.dtype = "bfloat16"
    return {"handjax": configs.parse_run(fast), "plain": configs.parse_run(plain),
            "handjax-bf16": configs.parse_run(half), "config": fast}


def bench_repeats(config, repeats: int, workroot: Path) -> dict:
    """Repeated cross-validation's cost: the protocol cell at R = 1 and at R = ``repeats``
    (R x K fold models in one array program), one after the other in this process after a
    shared warm-up. The training time (both phases' epochs and their compilation) is what
    the issue's aim of <= 2.5x at R = 3 is about; the wall time adds evaluation (SVMs,
    bootstrap) that grows with R too."""
    from handjax import config as configs
    specs = {}
    for r in (1, repeats):
        c = config.copy_and_resolve_references()
        c.repeats = r
        specs[r] = configs.parse_run(c)
    out = {"warmup_s": warm_up(specs[1])}
    from handjax.models.kernels import tuning   # the plan decided untimed: both runs read it
    tuning.resolve_plan(specs[1].model, specs[1].data.image_size, specs[1].train.batch_size)
    for r, spec in specs.items():
        run = _timed_run(spec, workroot / f"repeats{r}", f"R={r}")
        out[f"R={r}"] = {"wall_s": run["wall_s"], "fit_s": run["timing"].get("fit_s", 0.0),
                         "timing": run["timing"]}
    one, many = out["R=1"], out[f"R={repeats}"]
    out["fit_ratio"] = many["fit_s"] / one["fit_s"]
    out["wall_ratio"] = many["wall_s"] / one["wall_s"]
    print(f"  repeats {repeats} against 1: training {out['fit_ratio']:.2f}x "
          f"({many['fit_s']:.1f} s vs {one['fit_s']:.1f} s), end to end "
          f"{out['wall_ratio']:.2f}x", flush=True)
    return out


def _protocol_line(label: str, wall: float, timing: dict, compile_s: float | None,
                   cnn_acc: float, svm_acc: float) -> None:
    compiled = "compile in train" if compile_s is None else f"compile {compile_s:.1f} s"
    tune = f"tune {timing['tune_s']:.1f} s, " if "tune_s" in timing else ""
    phases = (f" (phase 1 {timing['epochs1_s']:.1f} s, phase 2 {timing['epochs2_s']:.1f} s)"
              if "epochs2_s" in timing else "")
    print(f"  {label:12s} wall {wall:7.1f} s  ({tune}prepare {timing.get('prepare_s', 0):.1f} s,"
          f" {compiled}, train {timing.get('run_s', 0):.1f} s{phases}, "
          f"evaluate {timing.get('evaluate_s', 0):.1f} s)  "
          f"CNN acc {cnn_acc:.4f}  SVM acc {svm_acc:.4f}", flush=True)


def max_probability_change(a: Path, b: Path, rule: str = "cnn") -> float:
    """The largest absolute difference between two runs' ``rule`` class probabilities, row by
    row (the same photos and folds: two ``predictions.csv`` of one protocol, read by
    :func:`handjax.evaluation.read_predictions`). After training both: the tuner holds
    bfloat16 to :data:`handjax.models.kernels.tuning.PROB_TOL` on one forward pass of the same
    weights, before any training."""
    from handjax.evaluation import PredictionsError, read_predictions
    pa, pb = read_predictions(a), read_predictions(b)
    same = (np.array_equal(pa.file, pb.file) and np.array_equal(pa.fold, pb.fold)
            and np.array_equal(pa.repeat, pb.repeat))
    if not same or rule not in pa.probs or rule not in pb.probs:
        raise PredictionsError(f"{a} and {b} are not {rule} predictions of the same photos "
                               "and folds")
    return float(np.max(np.abs(pa.probs[rule] - pb.probs[rule])))


PEER_NAMES = {"keras": "Keras", "torch": "PyTorch"}


def check_peers(parser, peers, model: str) -> None:
    """Each asked-for peer (``keras``, ``torch``) installed and covering ``model``, or its one
    line now, not after the handjax runs."""
    import importlib.util
    from handjax.bench.keras_peer import KERAS_APPS, NO_KERAS
    from handjax.bench.torch_peer import NO_TORCH, TORCH_MODELS
    needs = {"keras": (("keras",), NO_KERAS, KERAS_APPS),
             "torch": (("torch", "torchvision"), NO_TORCH, TORCH_MODELS)}
    for peer in peers:
        modules, missing, models = needs[peer]
        if any(importlib.util.find_spec(m) is None for m in modules):
            raise SystemExit(missing)
        if model not in models:
            parser.error(f"--{peer}: the plain {PEER_NAMES[peer]} reference covers "
                         f"{', '.join(models)}")


def same_files(a: Path, b: Path, names=("predictions.csv", "results.json")) -> bool:
    """Whether two workdirs hold byte-identical ``names``."""
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def fresh_import_seconds(module: str = "handjax.train.run") -> float:
    """Wall seconds of ``import module`` in a fresh interpreter: what a run's process pays
    before its first line of work (this process has paid it already)."""
    import subprocess
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - t


def warm_up(spec) -> float:
    """Pay the process's one-time costs before any timed run: JAX's backend start, the
    compilations of data generation and weight initialisation (the same for every run of
    the comparison) and orbax's import. Without it the first run measured pays them (1.5-2 s
    here) and the later ones get them free. The conv plan is not decided here: the first
    handjax run decides it, as a first run on a fresh machine does (:func:`fresh_machine`)."""
    from handjax.data.cohort import load_cohort
    from handjax.models import classifier
    t = time.perf_counter()
    examples = load_cohort(spec.data, spec.seed, spec.n_folds).examples
    classifier.model_parts(spec.model, spec.data.image_size, spec.seed,
                           len(examples.class_names))
    importlib.import_module("handjax.train.checkpoint")  # imports orbax
    return time.perf_counter() - t


@contextlib.contextmanager
def fresh_machine():
    """This machine's conv plan (the tuning cache) and compiled programs (JAX's persistent
    compilation cache, :func:`handjax.models.kernels.plan.compilation_cache_dir`) set aside
    for the block, so that its first run decides the plan and compiles everything as on a
    fresh machine; put back afterwards (what the block measured and compiled is dropped).
    Prepared data stays: the warm-up made it, untimed, for every run alike."""
    import shutil
    from jax.experimental.compilation_cache import compilation_cache
    from handjax.models.kernels import plan as plans
    path, compiled = plans.cache_path(), plans.compilation_cache_dir()
    kept = path.read_bytes() if path.exists() else None
    aside = compiled.with_name(compiled.name + ".bench-aside")
    shutil.rmtree(aside, ignore_errors=True)
    if compiled.exists():
        compiled.rename(aside)
    path.unlink(missing_ok=True)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        compilation_cache.reset_cache()
        shutil.rmtree(compiled, ignore_errors=True)
        if aside.exists():
            aside.rename(compiled)
        if kept is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(kept)


def _timed_run(spec, workdir: Path, label: str) -> dict:
    """``train.run`` of ``spec`` in ``workdir``, timed; prints its one-line summary."""
    from handjax.train import run as train
    t = time.perf_counter()
    results = train.run(spec, workdir)
    wall = time.perf_counter() - t
    timing = json.loads((workdir / "timing.json").read_text())
    compile_s = sum(v for k, v in timing.items() if k.startswith("compile"))
    _protocol_line(label, wall, timing, compile_s,
                   results["decisions"]["cnn"]["mean"]["accuracy"],
                   results["decisions"]["svm"]["mean"]["accuracy"])
    return {"wall_s": wall, "compile_s": compile_s, "timing": timing, "results": results,
            "peak_rss_gib": peak_rss_gib()}


def bench_protocol(specs: dict, workroot: Path, keras: bool = False,
                   bf16: bool = False, plain: bool = True, torch: bool = False) -> dict:
    """handjax's fold program vs the plain path (and, with ``keras``, the Keras reference;
    with ``torch``, the plain PyTorch one, :mod:`handjax.bench.torch_peer`, bfloat16
    autocast; with ``bf16``, handjax once more in bfloat16 compute); ``specs``:
    protocol_configs.

    handjax runs twice: "handjax" as a first run on a fresh machine (the conv-tuning cache
    and JAX's persistent compilation cache set aside, :func:`fresh_machine`: it decides
    the conv plan and compiles everything), then "handjax-warm", the same run again (the
    plan decided, the compilations cached: a rerun, or any later run of the same model and
    shapes: what the ratios are quoted for); their ratio is the cold/tuned pair.
    ``plain=False`` leaves the plain path out (at 10+10 epochs it takes as long as Keras)."""
    from handjax import metrics
    fast = specs["handjax"]
    out = {"imports_s": fresh_import_seconds(), "warmup_s": warm_up(fast)}
    print(f"  imports of a run (handjax.train.run, a fresh process): {out['imports_s']:.1f} s",
          flush=True)
    print(f"  warm-up, untimed and shared by every run below: {out['warmup_s']:.1f} s", flush=True)
    runs = [("handjax", "handjax"), ("handjax-warm", "handjax")]
    runs += [("handjax-bf16", "handjax-bf16"), ("handjax-bf16-warm", "handjax-bf16")] if bf16 else []
    runs += [("plain", "plain")] if plain else []
    with fresh_machine():
        for label, which in runs:
            out[label] = _timed_run(specs[which], workroot / label, label)
            results = out[label]["results"]
            if results["cache_bytes"] and label == "handjax":
                n, views = results["data"]["n"], fast.data.views
                print(f"               frozen-feature cache: {results['cache_bytes'] / 2**20:.1f} "
                      f"MiB ({results['cache_bytes'] / (n * views) / 1024:.1f} KiB per "
                      f"image-view, {n} images x {views} views)", flush=True)
    cold, warm = out["handjax"], out["handjax-warm"]
    out["cold_over_tuned"] = cold["wall_s"] / warm["wall_s"]
    same = same_files(workroot / "handjax", workroot / "handjax-warm",
                      ("predictions.csv", "conv_plan.json"))
    out["cold_tuned_identical"] = same
    print(f"  first run on a fresh machine / tuned run: {cold['wall_s']:.1f} s / "
          f"{warm['wall_s']:.1f} s = {out['cold_over_tuned']:.2f}x (tuning "
          f"{cold['timing'].get('tune_s', 0):.1f} s, then {warm['timing'].get('tune_s', 0):.1f} s)"
          f"   predictions identical: {same}", flush=True)
    if plain:
        out["ratio"] = out["plain"]["wall_s"] / out["handjax"]["wall_s"]
        out["ratio_warm"] = out["plain"]["wall_s"] / out["handjax-warm"]["wall_s"]
        same = all(np.allclose(out["plain"]["results"]["decisions"][d]["per_fold"][m],
                               out["handjax"]["results"]["decisions"][d]["per_fold"][m],
                               atol=1e-6)
                   for d in ("cnn", "cnn_mec") for m in metrics.STUDY_METRICS)
        out["results_identical"] = same
        print(f"  speed-up handjax vs plain: {out['ratio']:.1f}x first run, "
              f"{out['ratio_warm']:.1f}x warm   CNN results identical: {same}  "
              f"peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    if bf16:
        half, half_warm = out["handjax-bf16"], out["handjax-bf16-warm"]
        out["bf16_cold_over_tuned"] = half["wall_s"] / half_warm["wall_s"]
        out["ratio_bf16"] = warm["wall_s"] / half_warm["wall_s"]
        acc = [out[k]["results"]["decisions"]["cnn"]["per_fold"]["accuracy"]
               for k in ("handjax-warm", "handjax-bf16-warm")]
        out["bf16_max_fold_accuracy_change"] = float(np.max(np.abs(np.subtract(*acc))))
        out["bf16_max_probability_change"] = max_probability_change(
            workroot / "handjax-warm" / "predictions.csv",
            workroot / "handjax-bf16-warm" / "predictions.csv")
        print(f"  handjax-bf16 first run / its rerun: {half['wall_s']:.1f} s / "
              f"{half_warm['wall_s']:.1f} s = {out['bf16_cold_over_tuned']:.2f}x", flush=True)
        print(f"  speed-up handjax-bf16 vs handjax (float32), both warm: {out['ratio_bf16']:.2f}x"
              f"   vs float32: CNN probabilities max change "
              f"{out['bf16_max_probability_change']:.4f}, per-fold CNN accuracy max change "
              f"{out['bf16_max_fold_accuracy_change']:.4f}", flush=True)
        epoch2 = [out[k]["timing"].get("epochs2_s", 0.0) / max(1, specs["handjax"].train.epochs2)
                  for k in ("handjax-warm", "handjax-bf16-warm")]
        out["phase2_epoch_s"] = dict(zip(("float32", "bfloat16"), epoch2))
        out["phase2_bf16_speedup"] = epoch2[0] / epoch2[1] if epoch2[1] else float("nan")
        print(f"  phase-2 epoch: float32 {epoch2[0]:.3f} s, bfloat16 {epoch2[1]:.3f} s: "
              f"bf16 / float32 epoch speed {out['phase2_bf16_speedup']:.2f}x", flush=True)
    peers = []
    if keras:
        from handjax.bench.keras_peer import keras_protocol
        peers.append(("keras", "keras", "plain Keras 3", keras_protocol))
    if torch:
        from handjax.bench.torch_peer import torch_protocol
        peers.append(("torch", "torch-bf16", "plain PyTorch (bf16 autocast)", torch_protocol))
    for key, label, words, protocol in peers:
        p = out[key] = protocol(fast)
        _protocol_line(label, p["wall_s"], p["timing"], None, p["cnn_acc"], p["svm_acc"])
        out[f"ratio_{key}"] = p["wall_s"] / out["handjax"]["wall_s"]
        out[f"ratio_{key}_warm"] = p["wall_s"] / out["handjax-warm"]["wall_s"]
        print(f"  speed-up handjax vs {words}: {out[f'ratio_{key}']:.1f}x first run, "
              f"{out[f'ratio_{key}_warm']:.1f}x warm   peak RSS {peak_rss_gib():.2f} GiB",
              flush=True)
        if bf16:
            out[f"ratio_{key}_bf16_warm"] = p["wall_s"] / out["handjax-bf16-warm"]["wall_s"]
            print(f"  speed-up handjax-bf16 vs {words}: {out[f'ratio_{key}_bf16_warm']:.1f}x "
                  "warm", flush=True)
    if keras and torch:
        print(f"  plain Keras / plain PyTorch-bf16: {out['keras']['wall_s'] / out['torch']['wall_s']:.2f}x",
              flush=True)
    return out
