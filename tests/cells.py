"""Tiny configs shared by the tests: VGG16 at 32 px on 30 synthetic images, random
weights, 2+1 epochs (``handjax.config.cell(..., "smoke")``)."""
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
