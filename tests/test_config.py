"""The config boundary: protocol defaults, cells, the sweep, and one clear line per bad value."""
import dataclasses
from pathlib import Path

import pytest

from cells import experiment
from handjax import config as configs
from handjax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_protocol_defaults_parse_into_frozen_specs():
    spec = configs.parse(configs.cell("vgg19", "custom"))
    assert isinstance(spec, configs.RunSpec)
    assert (spec.model.name, spec.loss.name, spec.loss.ce_weight, spec.loss.label) == (
        "vgg19", "soft_custom", 0.0, "custom")
    assert spec.data.image_size == 224 and spec.train.epochs1 == 10 and spec.n_folds == 5
    assert spec.model.weights == "imagenet" and spec.svm.class_weight == "balanced"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train.lr1 = 1.0


def test_smoke_variant_and_random_weights():
    spec = configs.parse(configs.cell("vgg16", "binary", "smoke"))
    assert spec.name == "vgg16_binary_smoke"
    assert spec.model.weights is None and spec.data.image_size == 32


def test_study_config_is_a_sweep_of_twelve_cells():
    spec = configs.parse(configs.study_config("smoke"))
    assert isinstance(spec, configs.SweepSpec)
    assert len(spec.cells) == 12
    assert spec.cells[("custom", "resnet50")].name == "resnet50_custom_smoke"


def test_every_experiment_file_loads_without_path_edits():
    for path in sorted((ROOT / "experiments").glob("*.py")):
        module = experiment(path.stem)
        spec = configs.parse(module.get_config("smoke"))
        assert spec is not None
    assert not [p for p in project_files() if "sys.path" in p.read_text(encoding="utf-8")
                and p.name != "test_config.py"]


def project_files(root: Path = ROOT) -> list[Path]:
    """The project's own Python files: a virtual environment, build output or cache inside the
    clone (``python3 -m venv .venv`` is the usual layout) is none of the project's business."""
    files = [root / "launch.py"]
    for folder in ("handjax", "experiments", "tests"):
        files += sorted((root / folder).rglob("*.py"))
    return [p for p in files if "__pycache__" not in p.parts]


def test_project_files_leave_out_a_venv_inside_the_clone(tmp_path):
    for rel in ("launch.py", "handjax/config.py", "tests/test_x.py",
                ".venv/lib/python3.11/site-packages/six.py", "build/lib/handjax/config.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\xff not utf-8, sys.path")
    files = {p.relative_to(tmp_path).as_posix() for p in project_files(tmp_path)}
    assert files == {"launch.py", "handjax/config.py", "tests/test_x.py"}


BAD = [
    ("train.batch_size", 0, "train.batch_size=0"),
    ("train.batch_size", -4, "train.batch_size=-4"),
    ("data.image_size", 100000, "data.image_size=100000"),
    ("model.dtype", "garbage", "model.dtype='garbage'"),
    ("train.epochs1", -1, "train.epochs1=-1"),
    ("head.dropout", 1.5, "head.dropout=1.5"),
    ("data.views", 0, "data.views=0"),
    ("train.cache_dtype", "garbage", "train.cache_dtype='garbage'"),
    ("seed", -1, "seed=-1"),
    ("train.lr1", 0.0, "train.lr1=0.0"),
    ("model.conv_impl", "fft", "model.conv_impl='fft'"),
    ("train.fold_map", "pmap", "train.fold_map='pmap'"),
    ("train.cache_budget_gb", -1.0, "train.cache_budget_gb=-1.0"),
]


@pytest.mark.parametrize("key,value,needle", BAD)
def test_bad_value_is_one_line_naming_the_key(key, value, needle):
    c = configs.cell("vgg16", "categorical", "smoke")
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError) as err:
        configs.parse(c)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and "expected" in msg


def test_no_training_at_all_is_refused():
    c = configs.cell("vgg16", "categorical", "smoke")
    c.train.epochs1 = c.train.epochs2 = 0
    with pytest.raises(ConfigError, match="both 0"):
        configs.parse(c)


def test_class_map_on_synthetic_data_is_refused():
    c = configs.cell("vgg16", "categorical", "smoke")
    c.data.class_map = "a:normal"
    with pytest.raises(ConfigError, match="data.root"):
        configs.parse(c)


def test_class_map_parses():
    assert configs.parse_class_map("x:normal, y:ra") == (("x", "normal"), ("y", "ra"))
    with pytest.raises(ConfigError, match="class_map"):
        configs.parse_class_map("oops")


def test_model_names_are_the_backbone_registry():
    from handjax.models import backbones

    assert configs.MODEL_NAMES == backbones.NAMES


@pytest.mark.parametrize("key", ["train.lr1", "train.lr2", "svm.C", "loss.ce_weight"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused(key, value):
    c = configs.cell("vgg16", "categorical", "smoke")
    section, leaf = key.split(".")
    c[section][leaf] = value
    with pytest.raises(ConfigError, match=f"config.{key}={value!r}: expected a finite"):
        configs.parse(c)


def test_bootstrap_zero_is_accepted_and_negative_refused():
    c = configs.cell("vgg16", "categorical", "smoke")
    c.eval.bootstrap = 0
    assert configs.parse(c).eval.bootstrap == 0
    c.eval.bootstrap = -1
    with pytest.raises(ConfigError, match="eval.bootstrap=-1"):
        configs.parse(c)


def test_unknown_key_is_quoted_once_with_the_closest_known_keys():
    cfg = str(ROOT / "experiments" / "vgg19_custom.py") + ":smoke"
    assert configs.unknown_key(["launch.py", "--config", cfg, "--config.train.lr1=1"]) is None
    msg = configs.unknown_key(["launch.py", f"--config={cfg}", "--config.trian.lr1=1"])
    assert msg == ("unknown config key 'trian.lr1' (--config.trian.lr1=1); "
                   "did you mean train.lr1?")
    msg = configs.unknown_key(["launch.py", "--config", cfg, "--config.zzz=1"])
    assert msg.count("'zzz'") == 1 and "did you mean" not in msg


def test_one_line_keeps_quotes_whole():
    e = ValueError("flag --config.train.epochs1=ten: invalid literal for int() with base 10: "
                   "'ten'")
    assert configs.one_line(e).endswith("base 10: 'ten'")
    assert configs.one_line(KeyError("'lr3'")) == "lr3"
    nested = "Traceback (most recent call last):\n  File x\nhandjax.errors.ConfigError: bad 'x'"
    assert configs.one_line(RuntimeError(nested)) == "bad 'x'"


def test_config_file_that_does_not_parse_is_file_line_and_message(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("def get_config():\n    return 1 +\n")
    try:
        compile(bad.read_text(), str(bad), "exec")
    except SyntaxError as e:
        msg = configs.flag_error(e, ["launch.py", "--config", str(bad)])
    assert msg == f"config file {bad}:2 does not parse: invalid syntax"


# ------------------------------------------------ paths: resolved once, recorded resolved
def test_data_paths_are_resolved_and_recorded_resolved(tmp_path, monkeypatch):
    """``~``, a relative path and a trailing slash all become one absolute path, in the spec
    and in the config.json the run records: ``/x/base/`` and ``/x/base`` are one run."""
    import json
    home = tmp_path / "home"
    (home / "base").mkdir(parents=True)
    (home / "meta.csv").write_text("file,subject\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    specs = []
    for root in ("~/base", "base", "./base/", str(home / "base") + "/"):
        c = configs.cell("vgg16", "categorical", "smoke")
        c.data.root, c.data.metadata = root, "~/meta.csv"
        specs.append(configs.parse_run(c))
    for spec in specs:
        assert spec.data.root == str(home / "base")
        assert spec.data.metadata == str(home / "meta.csv")
        recorded = json.loads(spec.config_json)["data"]
        assert recorded["root"] == str(home / "base")
        assert recorded["metadata"] == str(home / "meta.csv")
    assert len({s.config_json for s in specs}) == 1


def test_a_missing_metadata_file_is_named_as_metadata_not_as_a_config_file(tmp_path):
    c = configs.cell("vgg16", "categorical", "smoke")
    c.data.metadata = str(tmp_path / "nope.csv")
    spec = configs.parse_run(c)       # a finished run is read without its metadata
    with pytest.raises(ConfigError) as err:
        configs.check_data_files(spec.data)
    line = configs.one_line(err.value)
    assert line.startswith(f"config.data.metadata={tmp_path / 'nope.csv'}: no such file")
    assert "config file" not in line


def test_our_own_errors_are_never_reworded_as_a_missing_config_file():
    from handjax.data.records import DataError
    e = DataError("config.data.metadata=/m.csv: cannot read it ([Errno 2] No such file or "
                  "directory: '/m.csv')")
    assert configs.one_line(e) == str(e)


def test_svm_max_train_bounds_and_old_configs_fit_every_photo():
    """``svm.max_train``: 2,000 by default, 0 accepted (every photo), a negative refused by name;
    a config from before the key (an older run's config.json) reads as 0,
    because that run's SVM was fitted on every training photo."""
    c = configs.cell("vgg16", "categorical", "smoke")
    assert configs.parse(c).svm.max_train == 2000
    c.svm.max_train = 0
    assert configs.parse(c).svm.max_train == 0
    for bad in (-1, -5):
        c.svm.max_train = bad
        with pytest.raises(ConfigError, match=f"svm.max_train={bad!r}"):
            configs.parse(c)
    old = configs.cell("vgg16", "categorical", "smoke")
    del old.svm["max_train"]
    assert configs.parse(old).svm.max_train == 0
