"""The protocol's settings, and the one place that reads them.

``get_config()`` is the study's protocol as an ``ml_collections.ConfigDict`` (what
``experiments/*.py`` return, overridable from the command line: ``--config.train.lr2=3e-5``).
:func:`parse` turns a ConfigDict into small frozen specs, checking every value; everything
below this module takes those specs or plain arguments, never the ConfigDict::

    spec = parse(config)          # RunSpec (one cell) or SweepSpec (the study's table)
    train.run(spec, workdir)      # or sweep.run(spec, workdir)

Which protocol choices come from the study and which are ours: README, "The protocol".
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from pathlib import Path

import ml_collections

from handjax.errors import ConfigError, HandjaxError
from handjax.models.kernels.plan import CONV_IMPLS

# The study's losses as (handjax loss name, ce_weight); "custom" is the study's custom_loss.
# "custom" is our reading of the study's custom_loss: its three metrics on a soft confusion
# matrix (losses.soft_custom); "severity" is handjax's own expected-cost objective;
# "corn" / "coral" are ordinal heads (handjax.ordinal), beyond the study.
LOSSES = {"categorical": ("categorical", 1.0), "binary": ("binary", 1.0),
          "custom": ("soft_custom", 0.0), "severity": ("severity", 1.0),
          "corn": ("corn", 0.0), "coral": ("coral", 0.0)}
MODEL_NAMES = ("vgg16", "vgg19", "resnet50", "mobilenetv2", "convnext_tiny", "efficientnetv2_b0")
STUDY_MODELS = ("vgg16", "vgg19", "resnet50", "mobilenetv2")   # the study's table
STUDY_LOSSES = ("categorical", "binary", "custom")
DTYPES = ("float32", "bfloat16")
MAX_IMAGE_SIZE = 1024


# ----------------------------------------------------------------------------- the protocol
def get_config(arg=None) -> ml_collections.ConfigDict:
    """The shared protocol; ``arg="smoke"`` gives tiny CPU settings."""
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0
    c.n_folds = 5
    # Repeated cross-validation (ours): R fold assignments (seeds seed .. seed+R-1), all R x K
    # fold models trained as one array program; 1 is the study's protocol.
    c.repeats = 1

    c.data = ml_collections.ConfigDict()
    c.data.root = ""            # "" -> the embedded synthetic hands; else an ImageFolder root
    c.data.class_map = ""       # e.g. "healthy:normal,nodes:heberden,rheuma:ra"
    c.data.on_error = "raise"   # or "skip": leave unreadable photos out, with a warning
    c.data.n_per_class = 50     # synthetic set size (ours: the study's count is not given)
    c.data.image_size = 224
    c.data.dedup = True         # near-duplicate photos share a fold (no train/test leak)
    c.data.views = 4            # precomputed views per image: the photo + 3 augmented draws
    c.data.metadata = ""        # optional CSV: file (relative to data.root), subject, columns

    c.model = ml_collections.ConfigDict()
    c.model.name = "vgg19"
    c.model.weights = "imagenet"   # "imagenet" | "none" (random) | path to a Keras .h5 file
    c.model.split = ""             # "" -> unfreeze the model's top block(s) in phase 2
    c.model.dtype = "float32"      # "bfloat16" on GPU/TPU; "auto": bf16 where it measures faster
    # "auto": on CPU each conv's algorithm measured on this machine once, cached under
    # $HANDJAX_CACHE/tuning (the table where unmeasured); "table": the fixed table alone
    # (handjax.models.kernels.convs.conv_policy); or one of "xla", "im2col", "mmgrad", "winograd",
    # "winograd4", "matmul" everywhere it applies.
    c.model.conv_impl = "auto"
    # True: decide a new conv plan for this machine instead of using the one recorded in the
    # workdir (docs/reproducibility.md). Not part of the run's identity: not in config.json.
    c.model.replan = False

    c.head = ml_collections.ConfigDict(dict(hidden=256, dropout=0.5))
    c.loss = ml_collections.ConfigDict(dict(name="categorical", ce_weight=1.0,
                                            label="categorical"))

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16
    c.train.epochs1 = 10        # phase 1: head only, backbone frozen
    c.train.lr1 = 1e-3
    c.train.epochs2 = 10        # phase 2: top block(s) + head
    c.train.lr2 = 1e-5
    c.train.mode = "cached"     # "cached" (frozen layers once) | "plain" (recompute, as Keras)
    c.train.fold_map = "auto"   # "auto" | "vmap" | "map" | "loop"
    c.train.cache_dtype = "float32"   # or "bfloat16" to halve the cache
    c.train.checkpoint_secs = 60.0   # save at an epoch end once this long after the last save
    c.train.shard_folds = True  # split the fold axis over devices when there are several
    c.train.cache_budget_gb = 4.0   # a larger frozen-feature cache spills to the workdir
    # 0, the study's protocol: the CNN trains on the whole training fold, and the temperature
    # and operating points of fold k are cross-fitted on the other folds' out-of-fold
    # predictions (ours). > 0 (ours): that share of each training fold is held out of CNN
    # training (stratified, subject-aware) and fits them instead.
    c.train.inner_val = 0.0

    c.eval = ml_collections.ConfigDict()
    c.eval.bootstrap = 2000       # subject-level bootstrap resamples for every 95% CI (0: none)
    c.eval.sensitivity = 0.90     # operating points: sensitivity >= this on the inner split
    c.eval.specificity = 0.90     # ... and specificity >= this

    c.svm = ml_collections.ConfigDict(dict(kernel="rbf", C=1.0, class_weight="balanced"))
    # Ours: a fold's SVM is fitted on at most this many of its training photos, drawn
    # stratified by class (an RBF SVC's fit grows with n^2 and more); 0: all of them.
    c.svm.max_train = 2000

    if arg == "smoke":
        apply_smoke(c)
    elif arg:
        raise ConfigError(f"unknown config variant {arg!r}: expected ':smoke' or nothing")
    return c


def apply_smoke(c: ml_collections.ConfigDict) -> None:
    """Tiny settings: random weights, 32 px, 30 images, 2+1 epochs (a CPU in < 2 min)."""
    c.data.n_per_class = 10
    c.data.image_size = 32
    c.data.views = 2
    c.model.weights = "none"
    c.train.batch_size = 8
    c.train.epochs1 = 2
    c.train.epochs2 = 1
    c.head.hidden = 32
    c.model.conv_impl = "table"   # no tuning pass; the same algorithms on every machine

def cell_config(config, model: str, loss: str) -> ml_collections.ConfigDict:
    """``config`` specialised to one study cell (the sweep fields, if any, removed)."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}: expected one of {', '.join(LOSSES)}")
    c = config.copy_and_resolve_references()
    with c.unlocked():
        for key in ("models", "losses"):
            if key in c:
                del c[key]
        c.model.name = model
        c.loss.name, c.loss.ce_weight = LOSSES[loss]
        c.loss.label = loss
        c.name = f"{model}_{loss}" + ("_smoke" if config.name.endswith("_smoke") else "")
    return c


def cell(model: str, loss: str, arg=None) -> ml_collections.ConfigDict:
    """One study cell: the protocol with this backbone and loss (see :data:`LOSSES`)."""
    c = get_config(arg)
    c.name = "cell" + ("_smoke" if arg == "smoke" else "")
    return cell_config(c, model, loss)


EXTENDED_MODELS = STUDY_MODELS + ("convnext_tiny", "efficientnetv2_b0")
EXTENDED_LOSSES = STUDY_LOSSES + ("corn", "coral")


def study_config(arg=None) -> ml_collections.ConfigDict:
    """The study's whole table: every backbone x loss, each cell in its own sub-workdir.
    ``arg``: "smoke" (tiny), "extended" (plus two current backbones and the ordinal heads;
    study.md shows them in blocks of their own) or "extended_smoke"."""
    extended = str(arg or "").startswith("extended")
    smoke = arg in ("smoke", "extended_smoke")
    if arg not in (None, "", "smoke", "extended", "extended_smoke"):
        raise ConfigError(f"unknown study variant {arg!r}: expected ':smoke', ':extended' "
                          "or ':extended_smoke'")
    c = get_config("smoke" if smoke else None)
    c.name = ("study_extended" if extended else "study") + ("_smoke" if smoke else "")
    c.models = ",".join(EXTENDED_MODELS if extended else STUDY_MODELS)
    c.losses = ",".join(EXTENDED_LOSSES if extended else STUDY_LOSSES)
    return c


# ----------------------------------------------------------------------------- specs
@dataclasses.dataclass(frozen=True)
class DataSpec:
    root: str                       # "" -> synthetic hands
    class_map: tuple | None         # ((folder, class), ...) or None
    on_error: str
    n_per_class: int
    image_size: int
    dedup: bool
    views: int
    metadata: str = ""              # CSV path, "" -> each photo its own subject


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    weights: str | None             # None (random), "imagenet" or a path
    split: str                      # "" -> the backbone's default boundary
    dtype: str
    conv_impl: str
    hidden: int
    dropout: float
    replan: bool = False            # decide a new conv plan (not in config.json)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    name: str
    ce_weight: float
    label: str                      # the study's name of the loss (table rows)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    batch_size: int
    epochs1: int
    lr1: float
    epochs2: int
    lr2: float
    mode: str
    fold_map: str
    cache_dtype: str
    checkpoint_secs: float
    shard_folds: bool
    inner_val: float = 0.0
    cache_budget_gb: float = 4.0


@dataclasses.dataclass(frozen=True)
class SvmSpec:
    kernel: str
    C: float
    class_weight: str | None
    max_train: int             # a fold's SVM: at most this many training photos (0: all)


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    bootstrap: int = 2000
    sensitivity: float = 0.90
    specificity: float = 0.90


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One cell: everything a run needs, checked. ``config_json`` is the ConfigDict as
    written to ``config.json`` (what a rerun compares against)."""
    name: str
    seed: int
    n_folds: int
    data: DataSpec
    model: ModelSpec
    loss: LossSpec
    train: TrainSpec
    svm: SvmSpec
    config_json: str
    eval: EvalSpec = EvalSpec()
    repeats: int = 1

    @property
    def n_models(self) -> int:
        """Fold models trained together: K folds x R repeats, repeat-major."""
        return self.n_folds * self.repeats


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """The study's table: ``cells[(loss, model)]`` is each cell's RunSpec."""
    name: str
    models: tuple
    losses: tuple
    cells: dict


# ----------------------------------------------------------------------------- parsing
# How to run, not what the run is: left out of config.json, so a rerun with it resumes.
NOT_RECORDED = (("model", "replan"),)


def config_json(config) -> str:
    """``config`` as written to config.json (less :data:`NOT_RECORDED`)."""
    d = config.to_dict()
    for section, key in NOT_RECORDED:
        if isinstance(d.get(section), dict):
            d[section].pop(key, None)
    return json.dumps(d, indent=2, sort_keys=True, default=str)


def parse(config) -> RunSpec | SweepSpec:
    """The checked specs of ``config``: a sweep when it names ``models`` (the study's
    table, ``study_config``), else one cell. Any bad value is a one-line ConfigError."""
    if "models" in config:
        return _parse_sweep(config)
    return parse_run(config)


def _parse_sweep(config) -> SweepSpec:
    models = _names(config.models, MODEL_NAMES, "models")
    losses = _names(config.get("losses", ",".join(STUDY_LOSSES)), tuple(LOSSES), "losses")
    cells = {(l, m): parse_run(cell_config(config, m, l)) for l in losses for m in models}
    return SweepSpec(config.name, tuple(models), tuple(losses), cells)


def _names(text, allowed, key: str) -> list[str]:
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ConfigError(f"config.{key}={text!r}: expected a comma list of "
                          f"{', '.join(allowed)}")
    return names


def parse_run(config) -> RunSpec:
    """The specs of one cell (see :func:`parse`); its paths resolved (:func:`resolve_paths`),
    and recorded resolved in ``config_json``."""
    config = resolve_paths(config)
    _check_int(config, "seed", lo=0)
    _check_int(config, "n_folds", lo=2, hi=20)
    if "repeats" in config:
        _check_int(config, "repeats", lo=1, hi=100)
    return RunSpec(name=str(config.name), seed=int(config.seed),
                   n_folds=int(config.n_folds), data=_data(config), model=_model(config),
                   loss=_loss(config), train=_train(config), svm=_svm(config),
                   config_json=config_json(config), eval=_eval(config),
                   repeats=int(config.get("repeats", 1)))


PATH_KEYS = ("data.root", "data.metadata")   # the config's paths, resolved on parsing


def resolve_paths(config):
    """A copy of ``config`` whose :data:`PATH_KEYS` are absolute paths (``~`` expanded,
    relative to the current folder, trailing slash gone: ``/x/base/`` is ``/x/base``); the
    run records them so, and can be read from any folder."""
    from handjax.data.folders import resolve_text   # here: parsing a config loads no JAX
    config = config.copy_and_resolve_references()
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = config[section].get(name, "")
        if value is not None and str(value).strip():
            config[section][name] = resolve_text(value)
    return config


def check_data_files(data: DataSpec) -> None:
    """A training run's inputs that must exist before any work: the metadata CSV named by
    ``data.metadata`` (one ConfigError naming the key; the photo folder's own checks come
    with the loader). Not checked on reading a finished run: ``predict`` needs neither."""
    if data.metadata and not Path(data.metadata).is_file():
        raise ConfigError(f"config.data.metadata={data.metadata}: no such file; give the "
                          "path of your metadata CSV (file, subject, ... columns)")


def _data(c) -> DataSpec:
    d = c.data
    _check_choice(c, "data.on_error", ("raise", "skip"))
    _check_int(c, "data.n_per_class", lo=2, hi=100_000)
    _check_int(c, "data.image_size", lo=32, hi=MAX_IMAGE_SIZE)
    _check_int(c, "data.views", lo=1, hi=64)
    class_map = parse_class_map(d.class_map) if d.class_map else None
    if class_map and not d.root:
        raise ConfigError("config.data.class_map is set but config.data.root is empty: the "
                          "synthetic hands have fixed classes; set data.root to your folder")
    return DataSpec(str(d.root), class_map, d.on_error, int(d.n_per_class),
                    int(d.image_size), bool(d.dedup), int(d.views), str(d.get("metadata", "")))


def parse_class_map(text: str) -> tuple:
    """``"folderA:normal,folderB:ra"`` -> ``(("folderA", "normal"), ("folderB", "ra"))``."""
    pairs = [p.split(":", 1) for p in str(text).split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ConfigError(f"config.data.class_map={text!r}: expected 'folder:class,...' "
                          "with class one of normal, heberden, ra")
    return tuple((k.strip(), v.strip()) for k, v in pairs)


def _model(c) -> ModelSpec:
    m = c.model
    _check_choice(c, "model.name", MODEL_NAMES)
    _check_choice(c, "model.dtype", (*DTYPES, "auto"))  # auto: classifier.compute_dtype
    _check_choice(c, "model.conv_impl", CONV_IMPLS)
    _check_int(c, "head.hidden", lo=1, hi=65536)
    _check_float(c, "head.dropout", lo=0.0, hi=1.0, hi_open=True)
    weights = None if m.weights in ("none", "", None) else str(m.weights)
    replan = m.get("replan", False)
    if not isinstance(replan, bool):
        raise ConfigError(f"config.model.replan={replan!r}: expected True or False")
    return ModelSpec(m.name, weights, str(m.split or ""), m.dtype, m.conv_impl,
                     int(c.head.hidden), float(c.head.dropout), replan)


def _loss(c) -> LossSpec:
    known = ("categorical", "binary", "severity", "corn", "coral", "soft_custom",
             "soft_plus", "soft_multi")
    _check_choice(c, "loss.name", known)
    _check_float(c, "loss.ce_weight", lo=0.0)
    return LossSpec(c.loss.name, float(c.loss.ce_weight), str(c.loss.get("label", c.loss.name)))


def _train(c) -> TrainSpec:
    t = c.train
    _check_int(c, "train.batch_size", lo=1, hi=4096)
    for key in ("train.epochs1", "train.epochs2"):
        _check_int(c, key, lo=0, hi=100_000)
    if t.epochs1 + t.epochs2 == 0:
        raise ConfigError("config.train.epochs1 and train.epochs2 are both 0: nothing would "
                          "be trained; set at least one to 1 or more")
    for key in ("train.lr1", "train.lr2"):
        _check_float(c, key, lo=0.0, lo_open=True)
    _check_choice(c, "train.mode", ("cached", "plain"))
    _check_choice(c, "train.fold_map", ("auto", "vmap", "map", "loop"))
    _check_choice(c, "train.cache_dtype", DTYPES)
    _check_float(c, "train.checkpoint_secs", lo=0.0)
    _check_float(c, "train.cache_budget_gb", lo=0.0)
    if "inner_val" in t:
        _check_float(c, "train.inner_val", lo=0.0, hi=0.5)
    return TrainSpec(int(t.batch_size), int(t.epochs1), float(t.lr1), int(t.epochs2),
                     float(t.lr2), t.mode, t.fold_map, t.cache_dtype,
                     float(t.checkpoint_secs), bool(t.shard_folds),
                     float(t.get("inner_val", 0.0)), float(t.get("cache_budget_gb", 4.0)))


def _eval(c) -> EvalSpec:
    if "eval" not in c:         # config.json of runs from before the clinical metrics
        return EvalSpec()
    _check_int(c, "eval.bootstrap", lo=0, hi=1_000_000)   # 0: point values, no CIs
    for key in ("eval.sensitivity", "eval.specificity"):
        _check_float(c, key, lo=0.0, hi=1.0, lo_open=True)
    e = c.eval
    return EvalSpec(int(e.bootstrap), float(e.sensitivity), float(e.specificity))


def _svm(c) -> SvmSpec:
    _check_choice(c, "svm.kernel", ("rbf", "linear", "poly", "sigmoid"))
    _check_float(c, "svm.C", lo=0.0, lo_open=True)
    weight = c.svm.class_weight or None
    if weight not in (None, "balanced"):
        raise ConfigError(f"config.svm.class_weight={weight!r}: expected 'balanced' or ''")
    max_train = 0   # a run from before the bound (no key) fitted every training photo
    if "max_train" in c.svm:
        _check_int(c, "svm.max_train", lo=0, hi=10**9)   # 0: every training photo
        max_train = int(c.svm.max_train)
    return SvmSpec(c.svm.kernel, float(c.svm.C), weight, max_train)


# ----------------------------------------------------------------------------- checks
def _get(c, key: str):
    for part in key.split("."):
        c = c[part]
    return c


def _check_choice(c, key: str, allowed) -> None:
    value = _get(c, key)
    if value not in allowed:
        raise ConfigError(f"config.{key}={value!r}: expected one of {', '.join(allowed)}")


def _check_int(c, key: str, lo: int, hi: int | None = None) -> None:
    value = _get(c, key)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"config.{key}={value!r}: expected an integer in {span}")


def _check_float(c, key: str, lo: float, hi: float | None = None, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    value = _get(c, key)
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    bad = not math.isfinite(v) or (v <= lo if lo_open else v < lo)   # inf, nan: never
    if hi is not None:
        bad = bad or (v >= hi if hi_open else v > hi)
    if bad and hi is None:
        raise ConfigError(f"config.{key}={value!r}: expected a finite number "
                          f"{'>' if lo_open else '>='} {lo}")
    if bad:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ConfigError(f"config.{key}={value!r}: expected a number in {left}{lo}, {hi}{right}")


# ----------------------------------------------------------------------------- flag errors
def flag_error(error: BaseException, argv) -> str:
    """One line for a command line that cannot become a config: a config file that does not
    parse (``file:line: message``), an unknown key (quoted once, with the closest known key
    suggested), or a value of the wrong type."""
    if isinstance(error, SyntaxError):
        where = f"{error.filename}:{error.lineno}" if error.lineno else str(error.filename)
        return f"config file {where} does not parse: {error.msg}"
    unknown = unknown_key(argv)
    if unknown:
        return unknown
    return one_line(error)


def unknown_key(argv) -> str | None:
    """``"unknown config key 'train.lr3' (--config.train.lr3=1); did you mean train.lr1?"``
    for the first ``--config.<key>`` override that the config file does not have, else None
    (also when the file itself cannot be loaded: another error says why)."""
    config = _load_config_arg(argv)
    if config is None:
        return None
    known = _flat_keys(config)
    for arg in argv[1:]:
        if not arg.startswith("--config.") or "=" not in arg:
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        if key not in known:
            close = closest(key, known)
            hint = (f"; did you mean {' or '.join(close)}?" if close
                    else "; see the config file for its keys")
            return f"unknown config key {key!r} ({arg}){hint}"
    return None


def closest(word: str, candidates) -> list[str]:
    """The candidates most like ``word`` (all that tie for the best difflib ratio >= 0.6)."""
    scored = [(difflib.SequenceMatcher(None, word, c).ratio(), c) for c in sorted(candidates)]
    best = max((r for r, _ in scored), default=0.0)
    return [c for r, c in scored if r == best] if best >= 0.6 else []


def _load_config_arg(argv):
    """The ConfigDict that ``--config path.py[:arg]`` names, or None."""
    import importlib.util
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    if not value:
        return None
    path, _, variant = value.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("handjax_config_file", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(variant) if variant else module.get_config()
    except Exception:   # noqa: BLE001 - the caller reports the original error instead
        return None


def _flat_keys(config, prefix: str = "") -> set:
    """Every key of ``config`` as a dotted path, the nested ConfigDicts' own keys included."""
    keys = set()
    for k, v in config.items():
        keys.add(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys |= _flat_keys(v, f"{prefix}{k}.")
    return keys


def one_line(error: BaseException) -> str:
    """The gist of an error whose text may embed a traceback (ml_collections does), with
    its quotes kept whole."""
    if isinstance(error, HandjaxError):   # ours are one line already: never reworded
        return str(error)
    msg = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    # ml_collections nests a KeyError's repr in another: unescape it into plain lines
    msg = msg.replace("\\n", "\n").replace("\\'", "'")
    lines = [_unquote(l.strip()) for l in msg.splitlines() if _unquote(l.strip())]
    if not lines:
        return type(error).__name__
    if "No such file or directory" in msg:
        paths = [l for l in lines if l.endswith(".py")]
        return f"config file not found: {paths[-1] if paths else lines[-1]}"
    if any(l.startswith("Traceback") for l in lines):
        # "handjax.errors.ConfigError: unknown ..." -> "unknown ..."
        return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1])
    return " ".join(lines)


def _unquote(line: str) -> str:
    """A line wholly inside one pair of quotes loses them; quotes inside a line stay."""
    for q in ("\"", "'"):
        if len(line) >= 2 and line[0] == line[-1] == q:
            line = line[1:-1]
    return line
