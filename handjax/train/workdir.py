"""The workdir: where a run's files live, and the guards that keep it to one run.

- ``config.json``: a rerun with another config is refused (:func:`claim`);
- ``ledger.json``: fingerprints of the data (:func:`handjax.data.cohort.data_fingerprint`),
  the weight file (:func:`handjax.models.keras_weights.weights_fingerprint`) and the conv
  plan; a rerun on changed data, weights or plan is refused, so folds are never mixed
  (:func:`check_ledger`);
- ``conv_plan.json``: the conv algorithms and compute dtype the run uses, decided once
  (:mod:`handjax.models.kernels.plan`), written with the ledger that pins it;
- ``.lock``: one run writes at a time (:class:`Lock`);
- ``INCOMPLETE``: present from a run's start until its results are written, so a run
  stopped in training or evaluation is never read as a finished one (:func:`check_finished`).
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
from pathlib import Path

from handjax.errors import RunError, TrainingError


COMPILATION_CACHE_BYTES = 4 * 2**30


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache in the handjax cache, one per machine
    (:func:`handjax.models.kernels.plan.compilation_cache_dir`): a second run, in any
    workdir, need not compile, and nothing is written beside the workdir."""
    import jax   # here, so that compare's check of a workdir does not load JAX
    from jax.experimental.compilation_cache import compilation_cache
    from handjax.models.kernels import plan
    path = str(plan.compilation_cache_dir())
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        # At most this much on disk, least recently used entries evicted first (JAX needs
        # `filelock` for that, a dependency; without it a cap breaks every cache read).
        if importlib.util.find_spec("filelock") is not None:
            jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
        # JAX decides once per process whether (and where) its cache is used, at the first
        # compilation: a process that compiled before (or under another $HANDJAX_CACHE)
        # decides again.
        compilation_cache.reset_cache()
    # Every program, the small ones too: a run calls ~55 programs of 5-50 ms to compile
    # (augmentation, initialisation, metrics), 1.2 s in all, against 0.35 s to read them.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def claim(workdir: Path, config_json: str) -> None:
    """Write ``config.json``; refuse to resume a workdir trained with another config."""
    path = workdir / "config.json"
    if path.exists() and (workdir / "checkpoints").exists():
        old = _read_json(path)
        new = json.loads(config_json)
        if old != new:
            old, new = flatten(old), flatten(new)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise TrainingError(
                f"{workdir} holds a run with another config (differs in "
                f"{', '.join(changed)}); rerun with --restart to discard that run, or "
                "choose a new --workdir to keep it")
    path.write_text(config_json + "\n")


def same_config(workdir: Path, config_json: str) -> bool:
    """Whether ``workdir`` holds a run of exactly this config."""
    path = Path(workdir) / "config.json"
    return path.exists() and json.loads(path.read_text()) == json.loads(config_json)


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ----------------------------------------------------------------------------- the ledger
LEDGER = "ledger.json"
INCOMPLETE = "INCOMPLETE"
PLAN = "conv_plan.json"   # the run's conv plan (the name handjax.models.kernels.plan.PLAN_FILE gives)
RUN_FILES = ("checkpoints", "metrics.jsonl", "results.json", "results.md", "timing.json",
             LEDGER, "predictions.csv", "model", INCOMPLETE, PLAN)


def check_ledger(workdir: Path, entries: dict, may_change: tuple = (),
                 conv_plan: str | None = None) -> None:
    """Record ``entries`` (``{"data": sha, "weights": sha, "conv_plan": sha}``) in
    ``ledger.json``, and the plan they pin as ``conv_plan.json`` (``conv_plan``: its text,
    :meth:`handjax.models.kernels.plan.ConvPlan.to_text`); when the workdir already holds
    checkpoints or results of other entries (but those named in ``may_change``), refuse
    with one line that says what changed, and write nothing: a changed folder would
    otherwise be split into new folds and scored by fold models that trained on some of
    its test photos."""
    path = workdir / LEDGER
    started = (workdir / "checkpoints").exists() or (workdir / "results.json").exists()
    if path.exists() and started:
        old = _read_json(path)
        changed = sorted(k for k in entries if old.get(k) != entries[k] and k not in may_change)
        if changed:
            raise TrainingError(
                f"{workdir} was trained on other {' and '.join(changed)} than this run's "
                f"(ledger.json); use a fresh --workdir, or --restart to discard that run")
    elif started and not path.exists():
        raise TrainingError(f"{workdir} holds a run without a ledger.json (older handjax): "
                            "its data cannot be checked; use a fresh --workdir or --restart")
    path.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    if conv_plan is not None:
        (workdir / PLAN).write_text(conv_plan)


def mark_incomplete(workdir: Path) -> None:
    """Mark ``workdir`` as holding a run whose results are not (yet) all written."""
    (Path(workdir) / INCOMPLETE).write_text(
        "A run started here and has not written all its results (it is running, or it "
        "stopped in training or evaluation). Rerun its launch command to finish it.\n")


def mark_finished(workdir: Path) -> None:
    """The run's results are all written: ``compare`` and ``predict`` may read them."""
    (Path(workdir) / INCOMPLETE).unlink(missing_ok=True)


def check_finished(workdir) -> None:
    """One RunError naming ``workdir`` when a run there has not finished writing its
    results (``INCOMPLETE``): its predictions.csv may be from a run that then failed."""
    if (Path(workdir) / INCOMPLETE).exists():
        raise RunError(f"{workdir} holds an unfinished run (it stopped before writing all its "
                       "results, or is still running); rerun its launch command to finish it")


def restart(workdir: Path) -> None:
    """Discard a previous run's files in ``workdir`` (``launch.py --restart``)."""
    for name in RUN_FILES:
        p = Path(workdir) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrainingError(f"{path} is damaged ({e}); use a fresh --workdir, or --restart "
                            "to discard that run") from e


# ----------------------------------------------------------------------------- the lock
class Lock:
    """An exclusive lock on a workdir while a run writes: a second run into it stops at once
    ("workdir in use by pid N"). ``flock`` locks die with their process, so a lock left by a
    killed run is simply taken over."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / ".lock"
        self.fd = None
        self.before = b""

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise TrainingError(f"{self.path.parent}: workdir in use by pid {holder}; wait "
                                "for that run or use another --workdir") from None
        self.before = os.pread(self.fd, 64, 0)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            # the file as it was: a refused run leaves the workdir byte-identical (the pid
            # only means something while the flock is held)
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, self.before, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def check_run_target(workdir, data_root: str = "") -> None:
    """Refuse (one TrainingError) a ``--workdir`` that is not a run's to write into: inside
    the photo folder the run reads (its files would land among the photos), holding another
    command's outputs (validate's, predict's, export's marker), or a folder that is no run's
    (no ``config.json``) holding photos. A run's own workdir, and a sweep's, pass."""
    from handjax.data import folders   # here: compare reads workdirs without loading JAX
    workdir = folders.resolve_path(workdir)
    if data_root and (workdir == folders.resolve_path(data_root)
                      or folders.resolve_path(data_root) in workdir.parents):
        raise TrainingError(f"--workdir {workdir} lies inside the photo folder data.root="
                            f"{data_root}; nothing was written. Choose a --workdir outside it")
    if not workdir.is_dir():
        return
    marker = folders.read_marker(workdir)
    own = (workdir / "config.json").exists() or (workdir / "sweep_ledger.json").exists()
    problem = (f"holds the outputs of python -m handjax.{marker.get('command', '?')}"
               if marker is not None else None if own else folders.output_problem(
                   workdir, "launch", {}))
    if problem:
        raise TrainingError(f"--workdir {workdir} {problem}; nothing was written. Choose a "
                            "new or empty folder for --workdir")


def check_output_target(out, workdir, command: str, inputs: dict, outside=()) -> Path:
    """``validate --out`` and ``predict --out``, checked before any work: the run in
    ``workdir`` must exist and be finished (a half-written run is named as such, not as "not found"),
    and ``out`` must be a folder ``command`` may write into
    (:func:`handjax.data.folders.check_output`: no run's workdir, no other command's
    results, no photos, not inside ``outside`` or the run's own ``data.root``). Returns ``out`` resolved; nothing is written."""
    from handjax.data import folders   # here: compare reads workdirs without loading JAX
    if not (Path(workdir) / "config.json").is_file():   # no run at all: say that first
        raise RunError(f"{Path(workdir) / 'config.json'} not found: point --workdir at a "
                       "finished run (python launch.py --config ...)")
    check_finished(workdir)
    # nor into the photos the run trained on: a new folder there would be read as a class
    root = _read_json(Path(workdir) / "config.json").get("data", {}).get("root")
    return folders.check_output(out, command, inputs,
                                outside=[*outside, *([root] if root else [])])


def open_workdir(workdir) -> Path:
    """Create ``workdir`` (one clear line when it is a file or cannot be written)."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise TrainingError(f"--workdir {workdir} is a file, not a folder; choose a folder")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_test.{os.getpid()}"   # processes may share the folder
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"--workdir {workdir} cannot be written ({e.strerror}); choose "
                            "a folder you can write to") from e
    return workdir
