"""``python -m handjax.bench gpu-study``: the study's 12 cells at 224 px, 10+10 epochs, end
to end on an accelerator, in one call (a short device session measures it all).

It prints and writes (``--json``) the sweep's wall time, each cell's ``timing.json`` parts,
the phase-2 program's MFU (the compiled epoch program's FLOPs per second of phase-2 epochs,
over the device's bf16 peak; FLOPs counted from its jaxpr, ``timing.json``'s
``flops_phase2``, with XLA's cost analysis, ``xla_flops_phase2``, beside it: on GPU that
one leaves out the convs cuDNN runs) and, where ``keras`` is
importable, the plain Keras 3 protocol of one cell on the same device and its ratio. On a
CPU it refuses in one line: the figures are the accelerator's.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

NO_ACCELERATOR = ("bench gpu-study: no accelerator (JAX's backend is cpu); run it where a "
                  "GPU or TPU is visible")


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m handjax.bench gpu-study",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg16,vgg19,resnet50,mobilenetv2")
    p.add_argument("--losses", default="categorical,binary,custom")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", default="10+10", help="phase-1+phase-2 epochs")
    p.add_argument("--n-per-class", type=int, default=50)
    p.add_argument("--weights", default="none", help="'none' (random) or 'imagenet'")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--peak-tflops", type=float,
                   help="the device's bf16 peak (default: looked up by device kind)")
    p.add_argument("--keras-model", default="vgg19",
                   help="the cell whose plain Keras protocol is timed ('' to skip)")
    p.add_argument("--workdir", help="keep the runs here (default: a temp dir)")
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args(argv)
    try:
        e1, e2 = (int(v) for v in a.epochs.split("+"))
    except ValueError:
        p.error(f"--epochs: expected 'N+M', got {a.epochs!r}")
    a.epochs1, a.epochs2 = e1, e2
    return a


def study_config(a):
    """The study's sweep config at ``a``'s settings (whole training folds, as the study)."""
    from handjax import config as configs
    c = configs.study_config()
    c.models, c.losses = a.models, a.losses
    c.model.weights, c.model.dtype = a.weights, a.dtype
    c.data.image_size, c.data.n_per_class = a.image_size, a.n_per_class
    c.train.epochs1, c.train.epochs2 = a.epochs1, a.epochs2
    return c


def phase2_mfu(timing: dict, epochs2: int, peak_tflops: float | None,
               key: str = "flops_phase2") -> float | None:
    """Phase 2's FLOPs per second (``timing[key]``, one compiled epoch, x epochs / the
    epochs' seconds) over ``peak_tflops``; None where a figure is missing."""
    flops, seconds = timing.get(key), timing.get("epochs2_s")
    if not (flops and seconds and peak_tflops):
        return None
    return flops * epochs2 / seconds / (peak_tflops * 1e12)


def main(argv, peak_lookup=lambda kind: None) -> int:
    """The CLI; ``peak_lookup``: device kind -> bf16 peak TFLOP/s (``bench``'s table)."""
    a = parse_args(argv)
    import jax
    if jax.default_backend() == "cpu":
        raise SystemExit(NO_ACCELERATOR)
    from handjax import config as configs
    from handjax.train import sweep
    kind = jax.devices()[0].device_kind
    peak = a.peak_tflops or peak_lookup(kind)
    print(f"gpu-study on {kind} ({jax.device_count()} device(s)), jax {jax.__version__}: "
          f"{a.models} x {a.losses}, {a.image_size} px, {a.epochs} epochs, {a.dtype}", flush=True)
    root = Path(a.workdir or tempfile.mkdtemp(prefix="handjax-gpu-study-"))
    spec = configs.parse(study_config(a))
    t = time.perf_counter()
    sweep.run(spec, root / "study")
    report = {"device": kind, "peak_tflops": peak, "wall_s": time.perf_counter() - t,
              "cells": {}}
    print(f"  study: {report['wall_s']:.1f} s for {len(spec.cells)} cells", flush=True)
    for (loss, model), cell in spec.cells.items():
        timing = json.loads((root / "study" / cell.name / "timing.json").read_text())
        mfu = phase2_mfu(timing, a.epochs2, peak)
        report["cells"][cell.name] = dict(
            timing, phase2_mfu=mfu, phase2_mfu_xla=phase2_mfu(timing, a.epochs2, peak,
                                                              "xla_flops_phase2"))
        print(f"  {cell.name:28s} wall {timing.get('wall_time_s', 0):7.1f} s  phase 2 "
              f"{timing.get('epochs2_s', 0):6.1f} s  MFU "
              + ("n/a" if mfu is None else f"{100 * mfu:.1f}%"), flush=True)
    if a.keras_model and importlib.util.find_spec("keras") is not None:
        report["keras"] = keras_ratio(a, spec, root)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


def keras_ratio(a, spec, root: Path) -> dict:
    """The plain Keras 3 protocol of the ``--keras-model`` categorical cell on this device,
    against that cell's handjax wall time from the study."""
    from handjax.bench.keras_peer import keras_protocol
    cell = spec.cells[("categorical", a.keras_model)]
    k = keras_protocol(cell)
    ours = json.loads((root / "study" / cell.name / "timing.json").read_text())["wall_time_s"]
    ratio = k["wall_s"] / ours if ours else None
    print(f"  keras {cell.name}: {k['wall_s']:.1f} s"
          + (f"  handjax {ours:.1f} s: {ratio:.1f}x" if ratio else ""), flush=True)
    return {"wall_s": k["wall_s"], "handjax_wall_s": ours, "ratio": ratio}
