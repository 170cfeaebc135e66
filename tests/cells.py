"""Tiny configs shared by the tests: VGG16 at 32 px on 30 synthetic images, random
weights, 2+1 epochs (``handjax.config.cell(..., "smoke")``)."""
import dataclasses

import numpy as np

from handjax import config as configs
from handjax.train import features, run as train
from handjax.data.cohort import load_cohort


def tiny_config(model: str = "vgg16", loss: str = "categorical", **train_overrides):
    c = configs.cell(model, loss, "smoke")
    for k, v in train_overrides.items():
        setattr(c.train, k, v)
    return c


def tiny_spec(**train_overrides):
    return configs.parse_run(tiny_config(**train_overrides))


def prepare(spec):
    """``(cohort, fold inputs)`` of a RunSpec, built as ``train.run`` builds them."""
    cohort = load_cohort(spec.data, spec.seed, spec.n_folds, spec.train.inner_val)
    return cohort, features.prepare(spec, cohort)


def run(config, workdir) -> dict:
    """``train.run`` of a ConfigDict, through the config boundary."""
    return train.run(configs.parse_run(config), workdir)


def experiment(name: str):
    """``experiments/<name>.py`` loaded by path, as launch.py's config flag loads it."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_peer_spec():
    """The protocol's RunSpec at its smallest (VGG16, 32 px, 4 photos a class, 1+1 epochs,
    2 folds, a 16-wide head): what the plain peers (Keras 3, PyTorch) are tested on."""
    from handjax.bench import protocol
    fast = protocol.protocol_configs("vgg16", 32, n_per_class=4, epochs1=1, epochs2=1,
                                     n_folds=2, weights="none", batch=8)["handjax"]
    return dataclasses.replace(fast, model=dataclasses.replace(fast.model, hidden=16))


def assert_peer_result(out: dict, n_folds: int = 2) -> None:
    """A plain peer's result: an accuracy in [0, 1] per fold and overall, for the CNN and
    the SVM, and its wall and stage times."""
    assert len(out["cnn_acc_per_fold"]) == len(out["svm_acc_per_fold"]) == n_folds
    for acc in (*out["cnn_acc_per_fold"], *out["svm_acc_per_fold"], out["cnn_acc"],
                out["svm_acc"]):
        assert np.isfinite(acc) and 0.0 <= acc <= 1.0
    assert out["wall_s"] > 0 and set(out["timing"]) == {"prepare_s", "run_s", "evaluate_s"}
