"""The conv plan is data, decided once and recorded in the run (docs/reproducibility.md):

- no file is read, written or printed while a model with a plan is traced;
- under ``conv_impl="auto"`` the same command twice from an empty cache gives byte-identical
  predictions.csv and results.json, and the second run measures nothing;
- a run killed and resumed after the cache changed resumes with its recorded plan and gives
  the uninterrupted run's files exactly; ``load_run`` uses the recorded plan too;
- repeat 0 of ``repeats=2`` equals the R = 1 run under ``auto``;
- a plan measured on another machine is used, with one line; ``replan`` decides anew.

The smoke cell (VGG16, 32 px, 30 photos, 2+1 epochs) with ``conv_impl="auto"`` and a fake
timer (no real timing: the plan it yields is fixed, and differs from the table).
"""
import builtins
import io
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cells import run, tiny_config
from handjax import config as configs
from handjax.errors import RunError
from handjax.models.kernels import plan as plans, tuning
from handjax.models.kernels.plan import ConvPlan

pytestmark = pytest.mark.slow   # trains the smoke cell end to end

TRAIN_KEY = "train/float32/2x2x512->512/k3x3/s1"   # VGG16's block5 at 32 px


class WinnerTimer:
    """A fake :data:`tuning.Timer`: every algorithm takes 1 s but ``winners[purpose]``,
    which takes 0.5 s, so the plan is fixed and differs from the table's."""

    def __init__(self, winners):
        self.winners, self.calls = winners, 0

    def __call__(self, layer, algorithm, batch):
        self.calls += 1
        seconds = 0.5 if self.winners.get(layer["purpose"]) == algorithm else 1.0
        return lambda: seconds


WINNERS = {"train": "matmul", "frozen": "im2col"}


def auto_config(**kw):
    c = tiny_config(**kw)
    c.model.conv_impl = "auto"
    return c


def _bytes(workdir, name):
    return (workdir / name).read_bytes()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """An empty HANDJAX_CACHE for this module, and the timer every run's tuning uses."""
    root = tmp_path_factory.mktemp("plan")
    old = os.environ.get("HANDJAX_CACHE")
    os.environ["HANDJAX_CACHE"] = str(root / "cache")
    timer = WinnerTimer(WINNERS)
    real, full = tuning.layer_timer, tuning.TUNE_FULL_EPOCHS
    tuning.layer_timer = timer
    tuning.TUNE_FULL_EPOCHS = 1   # the smoke cell's one phase-2 epoch gets the whole bound
    yield root, timer
    tuning.layer_timer, tuning.TUNE_FULL_EPOCHS = real, full
    if old is None:
        del os.environ["HANDJAX_CACHE"]
    else:
        os.environ["HANDJAX_CACHE"] = old


@pytest.fixture(scope="module")
def first(env):
    """The first run on a fresh machine (it tunes), and a second, identical command."""
    root, timer = env
    a = run(auto_config(), root / "a")
    tuned_calls = timer.calls
    b = run(auto_config(), root / "b")
    return root, a, b, tuned_calls


def _set_cache_plan(plan: ConvPlan, spec):
    """Make this machine's cache hold ``plan`` for ``spec``'s model (as a later tuning would)."""
    data = plans.read()
    done = next(k for k in data["plans"] if k.startswith(f"{spec.model.name}/"))
    plans.write(dict(data, plans={**data["plans"], done: plan.to_json()}))


def test_the_same_command_twice_is_identical_and_the_second_measures_nothing(first, env):
    root, a, b, tuned_calls = first
    _, timer = env
    assert tuned_calls > 0 and timer.calls == tuned_calls     # run b timed nothing
    timing = [json.loads(_bytes(root / w, "timing.json")) for w in ("a", "b")]
    assert timing[0]["tune_s"] > 0 and timing[1]["tune_s"] == 0.0
    for name in ("predictions.csv", "results.json", "conv_plan.json", "ledger.json"):
        assert _bytes(root / "a", name) == _bytes(root / "b", name), name
    plan = plans.load_plan(root / "a")
    assert plan.algorithm(TRAIN_KEY) == "matmul"               # not the table's im2col
    assert {a for k, a in plan.layers if k.startswith("frozen/")} == {"im2col"}
    ledger = json.loads(_bytes(root / "a", "ledger.json"))
    assert ledger["conv_plan"] == plan.fingerprint()


def test_resume_keeps_the_recorded_plan_when_the_cache_changed(first, monkeypatch):
    """Killed after phase 1; the cache then holds another plan (the table's); the resumed
    run gives the uninterrupted run's files exactly, and so does loading it."""
    from handjax.model import ensemble
    from handjax.train import checkpoint
    root, a, _, _ = first
    workdir = root / "killed"
    real_save = checkpoint.save

    def save_then_die(manager, step, state, wait=True):
        real_save(manager, step, state, wait)
        if step == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(auto_config(checkpoint_secs=0.0), workdir)
    monkeypatch.setattr(checkpoint, "save", real_save)
    spec = configs.parse_run(auto_config(checkpoint_secs=0.0))
    recorded = plans.load_plan(workdir)
    table = ConvPlan(tuple((k, "xla" if k.startswith("frozen/") else "im2col")
                           for k, _ in recorded.layers), "float32", "auto", recorded.machine)
    _set_cache_plan(table, spec)
    assert tuning.resolve_plan(spec.model, 32, 8)[0] == table   # a new run would use it
    resumed = run(auto_config(checkpoint_secs=0.0), workdir)
    assert resumed == a
    for name in ("predictions.csv", "results.json", "conv_plan.json"):
        assert _bytes(workdir, name) == _bytes(root / "a", name), name
    loaded = ensemble.load_run(root / "a")
    assert loaded.model.backbone.conv_plan == recorded != table
    _set_cache_plan(recorded, spec)


def test_repeat_0_is_the_single_run_under_auto(first):
    from handjax import evaluation as clinical
    root, _, _, _ = first
    c = auto_config()
    c.repeats = 2
    run(c, root / "repeats2")
    two = clinical.read_predictions(root / "repeats2" / "predictions.csv")
    one = clinical.read_predictions(root / "a" / "predictions.csv")
    first_repeat = two.rows(two.repeat == 0)
    np.testing.assert_array_equal(first_repeat.file, one.file)
    for rule in ("cnn", "cnn_calibrated", "svm"):
        np.testing.assert_array_equal(first_repeat.probs[rule], one.probs[rule])
    assert _bytes(root / "repeats2", "conv_plan.json") == _bytes(root / "a", "conv_plan.json")


def test_a_plan_from_another_machine_is_used_with_one_line_and_replan_decides_anew(
        first, monkeypatch):
    from handjax import console
    from handjax.model import ensemble
    from handjax.train import run as one_run
    root, _, _, _ = first
    recorded = plans.load_plan(root / "a")
    lines = []
    monkeypatch.setattr(console, "say", lines.append)
    monkeypatch.setattr(plans, "machine", lambda: {"backend": "cpu", "cpu": "another CPU"})
    spec = configs.parse_run(auto_config())
    plan, seconds = one_run.conv_plan(spec, root / "a")
    assert (plan, seconds) == (recorded, 0.0)
    assert len(lines) == 1 and "measured on another machine" in lines[0]
    assert ensemble.run_plan(root / "a", spec) == recorded and len(lines) == 2
    monkeypatch.undo()
    c = auto_config()
    c.model.replan = True
    replanned = configs.parse_run(c)
    assert replanned.config_json == spec.config_json      # not part of the run's identity
    assert one_run.conv_plan(replanned, root / "a")[0] == tuning.resolve_plan(spec.model, 32, 8)[0]


def test_an_edited_plan_is_refused_on_load(first, tmp_path):
    import shutil
    from handjax.model import ensemble
    root, _, _, _ = first
    copy = tmp_path / "run"
    shutil.copytree(root / "a", copy)
    data = json.loads(_bytes(copy, plans.PLAN_FILE))
    data["layers"][TRAIN_KEY] = "im2col"
    (copy / plans.PLAN_FILE).write_text(json.dumps(data))
    with pytest.raises(RunError, match="differs from the plan this run was trained with"):
        ensemble.load_run(copy)


@pytest.mark.parametrize("bad", [[], {"schema": 1}, {"schema": 1, "dtype": "float16",
                                                    "layers": {}, "machine": None},
                                 {"schema": 99, "dtype": "float32", "layers": {},
                                  "machine": None}])
def test_a_damaged_plan_file_is_one_error(tmp_path, bad):
    good = ConvPlan(((TRAIN_KEY, "matmul"),), "float32", "auto")
    (tmp_path / plans.PLAN_FILE).write_text(good.to_text())
    assert plans.load_plan(tmp_path) == good and good.to_json()["schema"] == plans.PLAN_SCHEMA
    (tmp_path / plans.PLAN_FILE).write_text(json.dumps(bad))
    with pytest.raises(RunError, match="conv_plan.json"):
        plans.load_plan(tmp_path)
    assert plans.load_plan(tmp_path / "none") is None


class NoIO:
    """While active, any file open, read, write or print raises."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def __enter__(self):
        def refuse(*a, **k):
            raise AssertionError(f"I/O while tracing: {a[:1]}")
        for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (builtins, "print"),
                            (pathlib.Path, "read_text"), (pathlib.Path, "write_text"),
                            (pathlib.Path, "read_bytes"), (pathlib.Path, "open")):
            self.monkeypatch.setattr(owner, name, refuse)
        return self

    def __exit__(self, *exc):
        self.monkeypatch.undo()


def test_no_io_while_tracing(monkeypatch):
    """The plan is an argument: tracing a model (its forward, and a training step's
    gradient) under ``auto`` with a plan opens, reads, writes and prints nothing, and runs
    the plan's algorithms."""
    from handjax.models import backbones, classifier
    spec = configs.parse_run(auto_config()).model
    plan = ConvPlan(((TRAIN_KEY, "matmul"),), "float32", "auto")
    backbone, variables, _, common = classifier.model_parts(spec, 32, 0, 3, plan=plan)
    model = classifier.Classifier(start="block4_pool", **common)
    x = jnp.zeros((2, 2, 2, 512))
    head = model.init(jax.random.key(0), x)

    def loss(v, x):
        return jnp.sum(model.apply(v, x, train=False)[0])
    with NoIO(monkeypatch):
        lowered = jax.jit(jax.grad(loss)).lower(head, x)
        layers = backbones.conv_layers(backbone, jax.ShapeDtypeStruct((1, 2, 2, 512),
                                                                      jnp.float32),
                                       start="block4_pool")
        with pytest.raises(AssertionError, match="I/O while tracing"):
            open(os.devnull)   # the guard itself works
    assert {l["algorithm"] for l in layers} == {"matmul"}
    assert "dot_general" in lowered.as_text()


def test_tune_command_decides_the_plan_a_run_then_uses(tmp_path, monkeypatch):
    """``python -m handjax.tune`` resolves the same plan a run would (each distinct model
    once), and a second call measures nothing; its CLI runs on a :smoke config."""
    import subprocess
    import sys
    from handjax import tune
    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tuning, "layer_timer", WinnerTimer(WINNERS))
    spec = configs.parse_run(auto_config())
    (got, plan, seconds), = tune.tune_specs([spec, spec], again=False, budget=None)
    assert got is spec and seconds > 0 and plan.algorithm(TRAIN_KEY) == "matmul"
    assert tune.tune_specs([spec], again=False, budget=None) == [(spec, plan, 0.0)]
    assert TRAIN_KEY in tune.plan_table(plan, {TRAIN_KEY: "measured"})
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "handjax.tune", "--config",
                          str(root / "experiments" / "vgg16_categorical.py") + ":smoke"],
                         capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert "conv_impl=table" in out.stdout and "nothing to measure" in out.stdout
    # Our lines only: no absl INFO from JAX's backend probing (launch.py's console.quiet).
    assert "Unable to initialize backend" not in out.stderr, out.stderr
    # A config file that is not there: one line and the usage code, as launch.py says it.
    out = subprocess.run([sys.executable, "-m", "handjax.tune", "--config",
                          "experiments/nope.py"], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("handjax: error:") and "experiments/nope.py" in line
