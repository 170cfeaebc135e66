"""Keras weight files: HDF5 reading, the Keras -> Flax map, ImageNet downloads, ``load``.

    module, variables = load(name, weights=None | "imagenet" | path, seed=0)

``weights="imagenet"`` reads ``weights_dir()/<file>`` (``handjax.cache.cache_dir()/weights``:
``$HANDJAX_CACHE`` if set and non-empty, else ``~/.cache/handjax``), downloading Keras's own
``include_top=False`` file there once, hash-checked.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from handjax.errors import HandjaxError
from handjax.cache import cache_dir
from handjax.models.backbones import MODELS, build, check_name, keras_layer_order
from handjax.models.common import WeightFile
from handjax.models.kernels import convs

__all__ = ["WEIGHT_FILES", "WeightFile", "WeightsError", "fetch_weights", "file_hash", "load",
           "read_keras_h5", "variables_from_keras", "weights_dir", "weights_fingerprint"]

# ----------------------------------------------------------------------------- Keras HDF5 files


def _attr_strings(group, key):
    """A string-list attribute, bytes or str, possibly chunked as key0, key1, ... (Keras)."""
    if key in group.attrs:
        values = list(group.attrs[key])
    else:
        values, i = [], 0
        while f"{key}{i}" in group.attrs:
            values += list(group.attrs[f"{key}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def read_keras_h5(path) -> list[tuple[str, list[np.ndarray]]]:
    """The weighted layers of a Keras legacy HDF5 weight file, in file order.

    Like Keras's ``load_weights``: follow the root ``layer_names`` attribute, skip layers
    whose ``weight_names`` is empty, read each layer's weights in ``weight_names`` order.
    Names are returned only for messages; matching is by position.
    """
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        out = []
        for layer in _attr_strings(root, "layer_names"):
            group = root[layer]
            arrays = [np.asarray(group[w]) for w in _attr_strings(group, "weight_names")]
            if arrays:
                out.append((layer, arrays))
    return out


def _targets(layer, template):
    """[(collection, key, keras shape, to_flax)] for one layer, in Keras weight order: the
    generic map (an architecture's ``keras_targets`` hook may replace it)."""
    params = template["params"][layer]
    if layer in template.get("batch_stats", {}):  # BatchNorm: gamma, beta, moving mean, var
        stats = template["batch_stats"][layer]
        return [
            ("params", "scale", params["scale"].shape, None),
            ("params", "bias", params["bias"].shape, None),
            ("batch_stats", "mean", stats["mean"].shape, None),
            ("batch_stats", "var", stats["var"].shape, None),
        ]
    if "kernel" not in params:  # LayerNormalization (gamma, beta) or ConvNeXt's LayerScale (gamma)
        return [("params", key, params[key].shape, None) for key in ("scale", "gamma", "bias") if key in params]
    kernel = params["kernel"].shape
    if layer.endswith(("_depthwise", "_dwconv2")):
        # Keras DepthwiseConv2D: (kh, kw, C, multiplier=1); grouped conv wants (kh, kw, 1, C).
        out = [("params", "kernel", (*kernel[:2], kernel[3], kernel[2]), lambda a: a.transpose(0, 1, 3, 2))]
    else:
        out = [("params", "kernel", kernel, None)]
    if "bias" in params:
        out.append(("params", "bias", params["bias"].shape, None))
    return out


def _group_targets(name: str):
    """``targets(group, template)``: [(Flax module, collection, key, keras shape, to_flax)]
    for one Keras weight group, which is one layer or a nested model (``keras_groups``)
    filling several Flax modules."""
    cls = MODELS[name]
    targets = cls.keras_targets or _targets

    def group_targets(group, template):
        modules = cls.keras_groups.get(group, (group,))
        return [(m, *t) for m in modules for t in targets(m, template)]

    return group_targets


def variables_from_keras(name: str, layers, template) -> dict:
    """Assigns Keras weights ``[(file layer name, [arrays])]`` to the model's variables by
    position; any count or shape mismatch raises one ValueError listing every problem."""
    order, targets_of = keras_layer_order(name), _group_targets(name)
    problems = []
    if len(layers) != len(order):
        problems.append(f"file has {len(layers)} layers with weights, {name} has {len(order)}")
    out = {col: {} for col in template}
    for k, (ours, (theirs, arrays)) in enumerate(zip(order, layers)):
        targets = targets_of(ours, template)
        if len(arrays) != len(targets):
            problems.append(f"layer #{k} {ours} (file: {theirs}): {len(arrays)} weights, expected {len(targets)}")
            continue
        for (module, col, key, shape, to_flax), a in zip(targets, arrays):
            if tuple(a.shape) != tuple(shape):
                problems.append(f"layer #{k} {ours} (file: {theirs}) {key}: shape {a.shape}, expected {shape}")
                continue
            a = np.asarray(a, np.float32)
            out[col].setdefault(module, {})[key] = jnp.asarray(to_flax(a) if to_flax else a)
    problems += [f"missing: layer #{k} {ours}" for k, ours in enumerate(order) if k >= len(layers)]
    problems += [f"extra: file layer #{k} {theirs}" for k, (theirs, _) in enumerate(layers) if k >= len(order)]
    if problems:
        raise ValueError(f"weights do not fit {name}: " + "; ".join(problems))
    return out


# ----------------------------------------------------------------------------- ImageNet files

WEIGHT_FILES: dict[str, WeightFile | None] = {name: cls.weight_file for name, cls in MODELS.items()}


def weights_dir() -> Path:
    """``cache_dir() / "weights"``, read at call time."""
    return cache_dir() / "weights"


def file_hash(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (SHA-256 of VGG19's 80 MB weight file: ~0.3 s)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path) -> None:
    """Streams ``url`` to ``dest`` with a progress bar (tests replace this function)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name.split(".part")[0]) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
                bar.update(len(chunk))


def _verify(path: Path, spec: WeightFile, record: Path) -> None:
    """Keras's published hash (MD5, or SHA-256 when 64 hex digits long, as Keras's
    ``get_file`` decides), else SHA-256 against the first-use record."""
    if spec.md5 is not None:
        algo = "SHA-256" if len(spec.md5) == 64 else "MD5"
        expected, got = spec.md5, file_hash(path, algo.replace("-", "").lower())
    elif record.exists():
        expected, got, algo = record.read_text().split()[0], file_hash(path, "sha256"), "SHA-256"
    else:
        return
    if got != expected:
        raise WeightsError(f"{algo} hash mismatch for {spec.file}: got {got}, expected {expected}")


class WeightsError(HandjaxError, ValueError):
    """Backbone weights cannot be used: no network and no cached copy, a hash mismatch, a
    file that is not a Keras weight file, or one that does not fit the model."""


def _use_cached(dest: Path, spec: WeightFile, record: Path) -> Path:
    """Re-checks a cached file (pinning its SHA-256 on first use when no hash is published)."""
    try:
        _verify(dest, spec, record)
    except ValueError as e:
        raise WeightsError(f"{e}; the cached copy {dest} is corrupt: delete it to download again") from None
    if spec.md5 is None and not record.exists():
        record.write_text(f"{file_hash(dest, 'sha256')}  {spec.file}\n")
    return dest


def fetch_weights(name: str) -> Path:
    """Path of the cached ImageNet no-top file for ``name``, downloading it once if absent.

    The download goes to a temporary name in the cache directory, is hash-checked, then
    moved into place atomically; a bad download is deleted. A cached file is re-checked.
    """
    check_name(name)
    spec = WEIGHT_FILES[name]
    if spec is None:
        raise WeightsError(f"no ImageNet weight file is known for {name}; pass weights=<path>")
    dest = weights_dir() / spec.file
    record = dest.with_name(dest.name + ".sha256")
    if dest.exists():
        return _use_cached(dest, spec, record)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{spec.file}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            _download(spec.url, tmp)
        except OSError as e:  # urllib's URLError and socket errors are OSErrors
            raise WeightsError(
                f"could not download ImageNet weights {spec.file} from {spec.url} ({e}); "
                f"download it by hand and place it at {dest}"
            ) from e
        try:
            _verify(tmp, spec, record)
        except ValueError as e:
            raise WeightsError(f"{e}; the download from {spec.url} was deleted") from None
        if spec.md5 is None:  # nothing published: pin this first download
            record.write_text(f"{file_hash(tmp, 'sha256')}  {spec.file}\n")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def weights_fingerprint(model_spec, seed: int) -> str:
    """SHA-256 of the backbone's weight file (``model_spec``: a ModelSpec), or the seed of a
    random init: what a run's ``ledger.json`` pins."""
    if model_spec.weights is None:
        return f"random init, seed {seed}"
    if model_spec.weights == "imagenet":
        return file_hash(fetch_weights(model_spec.name))
    return file_hash(model_spec.weights)


# ----------------------------------------------------------------------------- entry point


def _template(module):
    """Shapes of every variable, without computing anything."""
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)  # parameters do not depend on input size
    return convs.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def _random_variables(name, template, seed):
    """Keras's initialisers (glorot_uniform kernels, zero biases, BN/LayerNorm identity,
    LayerScale 1e-6) drawn with NumPy, one stream per Keras weight group: eager
    ``module.init`` compiles every layer shape and takes tens of seconds on CPU for
    MobileNetV2/ResNet50."""
    out = {col: {} for col in template}
    targets_of = _group_targets(name)
    for k, layer in enumerate(keras_layer_order(name)):
        rng = np.random.default_rng([seed, k])
        for module, col, key, _, _ in targets_of(layer, template):
            shape = template[col][module][key].shape
            if key == "kernel":
                fan_in, fan_out = (np.prod(shape[:-2]) * shape[-2], np.prod(shape[:-2]) * shape[-1])
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                value = rng.uniform(-limit, limit, shape)
            else:  # BN/LayerNorm identity; LayerScale gamma: Keras's 1e-6
                value = np.full(shape, {"scale": 1.0, "var": 1.0, "gamma": 1e-6}.get(key, 0.0))
            out[col].setdefault(module, {})[key] = jnp.asarray(value, jnp.float32)
    return out


def load(name: str, weights=None, *, seed: int = 0, dtype=jnp.float32, conv_impl: str = "auto"):
    """``(module, variables)`` for backbone ``name``.

    ``weights``: None (seeded random init, Keras's initialisers), "imagenet" (Keras's
    ``include_top=False`` ImageNet file, cached under :func:`weights_dir`), or the
    path of a Keras legacy HDF5 weight file. ``variables`` is ``{"params": ...}`` plus
    ``"batch_stats"`` for models with BatchNorm; parameters are float32 whatever ``dtype``.
    """
    module = build(name, dtype=dtype, conv_impl=conv_impl)
    template = _template(module)
    if weights is None:
        return module, _random_variables(name, template, seed)
    path = fetch_weights(name) if isinstance(weights, str) and weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; give the path of a Keras .h5 "
                           "weight file, 'imagenet' or 'none'")
    try:
        layers = read_keras_h5(path)
    except (OSError, KeyError, ValueError, TypeError) as e:  # not HDF5, or a broken layout
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WeightsError(f"{path}: not a readable Keras weight file ({first[:160]}); give "
                           f"a Keras .h5 file of {name} (include_top=False)") from e
    try:
        return module, variables_from_keras(name, layers, template)
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from e
