"""``python -m handjax.bench processes``: the speed check the way a user meets it. Each run
is a fresh process timed from outside, one after another on the same photos, starting from
an empty cache (``$HANDJAX_CACHE`` a new folder for the sequence):

1. handjax's first run (``python launch.py``: it draws or decodes the photos, decides the
   conv plan and compiles everything);
2. the study's protocol written plainly in Keras 3 (:mod:`handjax.bench.keras_peer`), with
   ``--keras``; in PyTorch with bf16 autocast (:mod:`handjax.bench.torch_peer`), with
   ``--torch``;
3. handjax's second run (a new workdir, the same command otherwise: the photos, plan and
   compiled programs cached).

It prints each wall, the peers' walls over the second run's, the first run's over the
second's, and whether the two runs wrote the same ``predictions.csv`` byte for byte (a
difference exits 1). ``bench protocol`` measures the same runs inside one process after a
shared warm-up; this one adds what a process pays around them (the interpreter, imports,
the first run's photos and the exit).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from handjax import console
from handjax.bench.protocol import check_peers, same_files
from handjax.models import backbones

REPO = Path(__file__).resolve().parents[2]   # launch.py and experiments/ live here
PEERS = {"keras": "plain Keras 3", "torch": "plain PyTorch (bf16 autocast)"}
RESULT = "PROCESSES "   # a peer process's last stdout line: this prefix, then its JSON


@dataclasses.dataclass(frozen=True)
class Settings:
    """The protocol every process of the sequence runs (``bench protocol``'s cell)."""

    model: str = "vgg19"
    image_size: int = 112
    n_per_class: int = 50
    views: int = 2
    epochs: str = "2+1"
    folds: int = 5
    batch: int = 16
    weights: str = "none"
    dtype: str = "float32"
    root: str | None = None     # a folder of photos (<class>/<file>); None: synthetic

    @property
    def epochs12(self) -> tuple[int, int]:
        e1, e2 = self.epochs.split("+")
        return int(e1), int(e2)

    def overrides(self) -> list[str]:
        """The ``--config.*`` flags of ``launch.py`` that make its cell this protocol."""
        e1, e2 = self.epochs12
        flags = {"model.weights": self.weights, "model.dtype": self.dtype,
                 "data.image_size": self.image_size, "data.n_per_class": self.n_per_class,
                 "data.views": self.views, "n_folds": self.folds, "train.epochs1": e1,
                 "train.epochs2": e2, "train.inner_val": 0.0, "train.batch_size": self.batch}
        if self.root:
            flags["data.root"] = self.root
        return [f"--config.{k}={v}" for k, v in flags.items()]

    def args(self) -> list[str]:
        """These settings as this command's own flags (for a peer's process)."""
        out = ["--model", self.model, "--image-size", str(self.image_size), "--n-per-class",
               str(self.n_per_class), "--views", str(self.views), "--epochs", self.epochs,
               "--folds", str(self.folds), "--batch", str(self.batch), "--weights",
               self.weights, "--dtype", self.dtype]
        return out + (["--root", self.root] if self.root else [])


def launch_command(settings: Settings, workdir: Path) -> list[str]:
    """handjax's run of ``settings`` as a user types it: ``python launch.py --config
    experiments/<model>_categorical.py`` with the protocol's overrides."""
    config = REPO / "experiments" / f"{settings.model}_categorical.py"
    return [sys.executable, str(REPO / "launch.py"), "--config", str(config),
            "--workdir", str(workdir), *settings.overrides()]


def peer_command(peer: str, settings: Settings) -> list[str]:
    """A peer's protocol (``keras`` or ``torch``) in a process of its own."""
    return [sys.executable, "-m", "handjax.bench", "processes", "--peer", peer,
            *settings.args()]


def timed(cmd: list[str], env: dict, label: str, log: Path) -> tuple[float, str]:
    """Run ``cmd`` to its end, its output to ``log``; (wall seconds, its stdout). A failed
    run stops the sequence with one line and the log's last lines."""
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=out, text=True,
                              check=False)
    wall = time.perf_counter() - t
    with open(log, "a") as out:
        out.write(proc.stdout)
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"bench processes: {label} exited {proc.returncode}:\n{tail}")
    return wall, proc.stdout


def peer_result(stdout: str, label: str) -> dict:
    """The JSON a peer's process printed last (:data:`RESULT`)."""
    lines = [l for l in stdout.splitlines() if l.startswith(RESULT)]
    if not lines:
        raise SystemExit(f"bench processes: {label} printed no result")
    return json.loads(lines[-1][len(RESULT):])


def summary(walls: dict) -> dict:
    """The sequence's ratios: each peer's wall over handjax's second run
    (``"<peer>_over_second"``), and the first run's over the second
    (``"first_over_second"``). ``walls``: label -> whole-process seconds, with
    ``"first"`` and ``"second"``."""
    second = walls["second"]
    out = {"first_over_second": walls["first"] / second}
    out.update({f"{p}_over_second": walls[p] / second for p in PEERS if p in walls})
    return out


def run_sequence(settings: Settings, peers: list[str], root: Path) -> dict:
    """The sequence (module docstring) in ``root``; returns the walls and :func:`summary`."""
    cache = root / "cache"
    cache.mkdir()
    env = dict(os.environ, HANDJAX_CACHE=str(cache))
    walls, inner = {}, {}
    order = [("first", "handjax first run")] + [(p, PEERS[p]) for p in peers] + [
        ("second", "handjax second run")]
    for key, label in order:
        if key in PEERS:
            walls[key], out = timed(peer_command(key, settings), env, label,
                                    root / f"{key}.log")
            inner[key] = peer_result(out, label)["wall_s"]
            extra = f"  (its protocol {inner[key]:.1f} s after the imports)"
        else:
            workdir = root / key
            walls[key], _ = timed(launch_command(settings, workdir), env, label,
                                  root / f"{key}.log")
            inner[key] = json.loads((workdir / "timing.json").read_text())["wall_time_s"]
            extra = f"  (timing.json: {inner[key]:.1f} s inside the run)"
        print(f"  {label:32s} {walls[key]:7.1f} s{extra}", flush=True)
    ratios = summary(walls)
    identical = same_files(root / "first", root / "second")
    for p in peers:
        print(f"  {PEERS[p]} / handjax second run: {ratios[f'{p}_over_second']:.2f}x",
              flush=True)
    print(f"  handjax first run / second run: {ratios['first_over_second']:.2f}x   "
          f"predictions.csv and results.json identical: {identical}", flush=True)
    return {"settings": dataclasses.asdict(settings), "wall_s": walls, "inner_s": inner,
            **ratios, "identical": identical}


def peer_main(peer: str, settings: Settings) -> int:
    """A peer's process: its protocol on the settings' photos and folds, then one
    :data:`RESULT` line."""
    from handjax.bench import protocol
    e1, e2 = settings.epochs12
    config = protocol.protocol_configs(settings.model, settings.image_size,
                                       settings.n_per_class, e1, e2, settings.folds,
                                       settings.weights, settings.batch,
                                       views=settings.views, root=settings.root)["config"]
    from handjax import config as configs
    fast = configs.parse_run(config)
    if peer == "keras":
        from handjax.bench.keras_peer import keras_protocol
        result = keras_protocol(fast)
    else:
        from handjax.bench.torch_peer import torch_protocol
        result = torch_protocol(fast)
    print(RESULT + json.dumps(result, default=float), flush=True)
    return 0


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m handjax.bench processes",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--keras", action="store_true", help="run the plain Keras 3 protocol "
                   "between handjax's two runs (pip install -e '.[test]')")
    p.add_argument("--torch", action="store_true", help="and the plain PyTorch one "
                   "(pip install -e '.[torch]')")
    p.add_argument("--quick", action="store_true", help="tiny settings (32 px, 30 photos, "
                   "1+1 epochs, 2 folds)")
    p.add_argument("--model", default="vgg19", choices=backbones.NAMES)
    p.add_argument("--image-size", type=console.int_at_least(32, 1024), default=112)
    p.add_argument("--n-per-class", type=console.int_at_least(2), default=50)
    p.add_argument("--views", type=console.int_at_least(1, 64), default=2)
    p.add_argument("--epochs", type=console.epochs, default="2+1")
    p.add_argument("--folds", type=console.int_at_least(2, 20), default=5)
    p.add_argument("--batch", type=console.int_at_least(1), default=16)
    p.add_argument("--weights", default="none", help="'none' (random), a Keras .h5 file, or "
                   "'imagenet' (downloaded into the sequence's empty cache by the first run, "
                   "inside its time)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "auto"),
                   help="handjax's model.dtype")
    p.add_argument("--root", help="a folder of photos (<class>/<file>) instead of the "
                   "synthetic ones")
    p.add_argument("--peer", choices=tuple(PEERS), help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the measurements to this file")
    a = p.parse_args(argv)
    if a.quick:
        a.image_size, a.n_per_class, a.batch, a.epochs, a.folds = 32, 10, 8, "1+1", 2
    root = str(Path(a.root).expanduser().resolve()) if a.root else None
    settings = Settings(a.model, a.image_size, a.n_per_class, a.views, a.epochs, a.folds,
                        a.batch, a.weights, a.dtype, root)
    if a.peer:
        return peer_main(a.peer, settings)
    peers = [k for k in PEERS if getattr(a, k)]
    if not (REPO / "launch.py").is_file():
        raise SystemExit(f"bench processes: runs launch.py from a clone of handjax; there is "
                         f"none at {REPO}")
    check_peers(p, peers, a.model)
    photos = f"photos of {root}" if root else f"{3 * a.n_per_class} synthetic photos"
    print(f"processes: {a.model} {a.image_size} px, {photos} x {a.views} views, {a.epochs} "
          f"epochs, {a.folds} folds + SVM, weights={a.weights}, dtype={a.dtype}; each run a "
          "fresh process, the cache empty at the start", flush=True)
    with tempfile.TemporaryDirectory(prefix="handjax-processes-") as tmp:
        report = run_sequence(settings, peers, Path(tmp))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["identical"] else 1

