"""The conv tuner: which algorithm (and, for ``model.dtype="auto"``, which dtype) is fastest
is measured on the machine, once, not read from a table.

    seconds = tune(model_spec, image_size, batch)   # before the model is traced (train.run)

For every distinct conv of the model (its :func:`handjax.models.kernels.plan.layer_key`: purpose,
dtype, shape) that this machine's cache file has no choice for, each applicable candidate
algorithm is compiled and timed, and the fastest kept:

- ``"train"`` convs (the layers phase 2 trains): forward and both gradients, a few SGD
  steps inside one ``lax.scan`` (the epoch program's loop, where XLA:CPU's own conv
  gradients are slowest), at the training batch size;
- ``"frozen"`` convs (the prefix computed once per photo view, and the whole backbone's
  pooled features): the forward pass, at the batch :mod:`handjax.train.features` runs them in.

``"eval_folds"`` convs (forward under ``vmap`` over per-fold weights) keep the table. With
``model.dtype="auto"`` both dtypes are tuned, then the trained part of the model is timed
as a whole in float32 and in bfloat16 (each with its own choices); bfloat16 is kept only
where it is faster *and* its class probabilities agree with float32's within
:data:`PROB_TOL` on the same inputs and weights (the bound ``tests/test_bf16.py`` holds the
smoke cell to).

The cost is bounded: no candidate starts after :data:`TUNE_BUDGET_S` seconds (a conv not
wholly measured, and the convs left, keep the table's choice this time and are measured by
the next run; the dtype is decided once every conv of both dtypes is) and is shown as one
progress bar. On a loaded machine, where one compilation can take seconds, tuning a model
thus spreads over a few runs. Later runs read the cache and measure nothing. Only ``conv_impl="auto"`` on
CPU in a single process tunes: off CPU the table's ``lax.conv`` (cuDNN) is the choice, and
processes of one run must not choose differently.
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm.auto import tqdm

from handjax.models import backbones
from handjax.models.kernels import convs, plan as tuned

TUNE_BUDGET_S = 15.0
PROB_TOL = 0.02
# Candidates per purpose (each kept where it applies to the conv). Training leaves out
# "xla": XLA:CPU's own conv gradients inside a scan body measured 40-50x slower than the
# others (VGG19's 7x7x512 block, 2-core EPYC: 12.5 s against 0.26-0.50 s), and one timing of
# it would spend the whole budget. A forward pass alone: "mmgrad" is "xla"'s forward,
# "matmul" im2col's with float32 accumulation.
CANDIDATES = {"train": ("im2col", "mmgrad", "winograd", "winograd4", "matmul"),
              "frozen": ("xla", "im2col", "winograd", "winograd4")}
TRAIN_STEPS = 2          # SGD steps per timed scan
REPEATS = 2              # timed runs of each compiled candidate; the best counts
FROZEN_BATCH = 10        # features.frozen_features's batch ...
PER_IMAGE_MIN_PIXELS = 28 * 28   # ... and its one-image-at-a-time maps (features.py)

Timer = Callable[[dict, str, int], float]


# ----------------------------------------------------------------------------- the layers
def model_layers(name: str, dtype, image_size: int, split: str | None) -> list[dict]:
    """The distinct convs of backbone ``name`` the tuner times (:func:`convs.record_layers`
    entries, first of each key): the layers after ``split`` (None: all) for the "train"
    purpose, then every layer for the "frozen" one; each purpose largest work first."""
    frozen = backbones.build(name, dtype=dtype, purpose="frozen")
    trained = backbones.build(name, dtype=dtype, purpose="train")
    image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), dtype)
    boundary = image if split is None else jax.eval_shape(lambda x: frozen.init_with_output(
        jax.random.key(0), x, stop=split)[0], image)
    with convs.record_layers() as seen:
        jax.eval_shape(lambda x: trained.init(jax.random.key(0), x, start=split), boundary)
        jax.eval_shape(lambda x: frozen.init(jax.random.key(0), x), image)
    unique = {}
    for layer in seen:
        unique.setdefault(layer["key"], layer)
    return sorted(unique.values(), key=lambda l: (l["purpose"] != "train", -_work(l)))


def _work(layer: dict) -> float:
    """Multiply-adds per image (output pixels x kernel taps x channels), for ordering."""
    h, w, cin = layer["in_shape"]
    kh, kw = layer["kernel_size"]
    per_tap = 1 if layer["depthwise"] else cin
    return h * w / layer["strides"] ** 2 * kh * kw * per_tap * layer["features"]


def candidates(layer: dict) -> tuple[str, ...]:
    """The algorithms worth timing for ``layer``: its purpose's :data:`CANDIDATES` that apply
    to it (``convs.conv_algorithm`` runs them as asked, not as its im2col fallback);
    "winograd4" in float32 only (in bfloat16 it measured 5.6e-2 off float32's ``xla``)."""
    h, w, _ = layer["in_shape"]
    offered = [a for a in CANDIDATES[layer["purpose"]]
               if a != "winograd4" or layer["dtype"] == "float32"]
    return tuple(a for a in offered
                 if convs.conv_algorithm(a, "cpu", h * w, layer["dtype"], layer["purpose"],
                                         kernel_size=layer["kernel_size"],
                                         strides=layer["strides"],
                                         depthwise=layer["depthwise"]) == a)


def batch_for(layer: dict, train_batch: int) -> int:
    """The batch ``layer`` runs at in the real program: the training batch for "train",
    one image for frozen maps larger than 28x28 (run per image), else :data:`FROZEN_BATCH`."""
    if layer["purpose"] == "train":
        return train_batch
    h, w, _ = layer["in_shape"]
    return 1 if h * w > PER_IMAGE_MIN_PIXELS else FROZEN_BATCH


# ----------------------------------------------------------------------------- timing
def _conv_module(layer: dict, algorithm: str) -> convs.Conv:
    return convs.Conv(layer["features"], layer["kernel_size"], layer["strides"], layer["pads"],
                      use_bias=False, depthwise=layer["depthwise"], impl=algorithm,
                      dtype=jnp.dtype(layer["dtype"]), purpose=layer["purpose"])


def layer_program(layer: dict, algorithm: str, batch: int):
    """(jitted fn, args) of ``layer`` run by ``algorithm``: for "train", :data:`TRAIN_STEPS`
    SGD steps (forward, input and kernel gradients) in one ``lax.scan``; else the forward."""
    conv = _conv_module(layer, algorithm)
    dtype = jnp.dtype(layer["dtype"])
    x = jax.random.normal(jax.random.key(1), (batch, *layer["in_shape"]), jnp.float32)
    kernel = conv.init(jax.random.key(0), x[:1].astype(dtype))["params"]["kernel"]
    apply = lambda k, x: conv.apply({"params": {"kernel": k}}, x)  # noqa: E731
    if layer["purpose"] == "frozen" and algorithm in convs.WINOGRAD_KERNELS:
        # As the frozen programs run it: the kernel transformed once, outside the timing
        # (:func:`handjax.models.backbones.with_winograd_kernels`).
        u = convs.WINOGRAD_KERNELS[algorithm][1](kernel)
        return jax.jit(lambda ku, x: conv.apply(
            {"params": {"kernel": ku[0]}, convs.TRANSFORMED: {"kernel": ku[1]}}, x)), \
            ((kernel, u), x.astype(dtype))
    if layer["purpose"] != "train":
        return jax.jit(apply), (kernel, x.astype(dtype))

    def loss(k, x):
        return 0.5 * jnp.mean(jnp.square(apply(k, x).astype(jnp.float32)))

    def steps(k, x):  # x an argument: as a closed-over constant XLA would fold its pads
        def step(carry, _):
            k, acc = carry
            dk, dx = jax.grad(loss, argnums=(0, 1))(k, x)
            return (k - 1e-3 * dk, acc + jnp.sum(dx.astype(jnp.float32))), None
        return lax.scan(step, (k, jnp.float32(0)), None, length=TRAIN_STEPS)[0]

    return jax.jit(steps), (kernel, x.astype(dtype))


def best_seconds(fn, args, repeats: int = REPEATS) -> float:
    """Best of ``repeats`` timed runs after one untimed (compiling) run."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def time_layer(layer: dict, algorithm: str, batch: int) -> float:
    """Seconds of :func:`layer_program` (best of :data:`REPEATS`): the default timer."""
    return best_seconds(*layer_program(layer, algorithm, batch))


# ----------------------------------------------------------------------------- choosing
def pick(seconds: dict[str, float]) -> str:
    """The algorithm with the least measured time (the first listed on a tie)."""
    return min(seconds, key=seconds.get)


def tune_layers(layers: list[dict], train_batch: int, *, timer: Timer = time_layer,
                budget_s: float = TUNE_BUDGET_S, path=None, clock=time.perf_counter,
                desc: str = "tuning convs") -> dict:
    """Measure every candidate of each layer whose key the cache lacks, keep the fastest,
    and write the cache; stop starting new layers once ``budget_s`` has passed. Returns
    ``{key: entry}`` of the layers measured now (entry: algorithm, seconds, batch)."""
    data = tuned.read(path)
    todo = [l for l in layers if l["key"] not in data["layers"]]
    measured: dict = {}
    if not todo:
        return measured
    start = clock()
    bar = tqdm(todo, desc=desc, leave=False, unit="conv")
    for layer in bar:
        batch, seconds = batch_for(layer, train_batch), {}
        for algorithm in candidates(layer):
            if clock() - start > budget_s:
                break
            seconds[algorithm] = float(timer(layer, algorithm, batch))
        else:  # every candidate measured: keep the fastest
            measured[layer["key"]] = {"algorithm": pick(seconds), "seconds": seconds,
                                      "batch": batch}
            continue
        break  # out of budget: this layer and the rest wait for the next run
    bar.close()
    if measured:
        data = dict(data, layers={**data["layers"], **measured})
        tuned.write(data, path)
    return measured


# ----------------------------------------------------------------------------- dtype
def choose_dtype(seconds: dict[str, float], max_prob_diff: float) -> str:
    """bfloat16 only where it measured faster than float32 and its probabilities stayed
    within :data:`PROB_TOL` of float32's; else float32."""
    faster = seconds["bfloat16"] < seconds["float32"]
    return "bfloat16" if faster and max_prob_diff <= PROB_TOL else "float32"


def _top_parts(name: str, split: str, image_size: int, batch: int, dtype):
    """The trained part (layers after ``split``) in ``dtype``, float32 weights, a fixed
    random head and input: (module, params, head, x)."""
    module = backbones.build(name, dtype=dtype, purpose="train")
    image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    shape = jax.eval_shape(lambda x: backbones.build(name, purpose="frozen").init_with_output(
        jax.random.key(0), x, stop=split)[0], image).shape
    x = jax.nn.relu(jax.random.normal(jax.random.key(2), (batch, *shape[1:]), jnp.float32))
    variables = module.init(jax.random.key(0), x[:1].astype(dtype), start=split)
    return module, variables, x


def _pooled(module, variables, params, x, split, dtype):
    feats = module.apply({**variables, "params": params}, x.astype(dtype), start=split,
                         train=False)
    return jnp.mean(feats.astype(jnp.float32), axis=(1, 2))


def top_probabilities(name: str, split: str, image_size: int, batch: int, dtype) -> np.ndarray:
    """Class probabilities of the trained part on fixed random inputs and weights: its
    pooled features, standardised (float32 statistics), through a fixed 3-class head whose
    logits spread like a trained one's (std ~3)."""
    module, variables, x = _top_parts(name, split, image_size, batch, jnp.float32)
    ref = _pooled(module, variables, variables["params"], x, split, jnp.float32)
    mean, std = ref.mean(0), ref.std(0) + 1e-6
    head = 3.0 * jax.random.normal(jax.random.key(3), (ref.shape[-1], 3)) / np.sqrt(ref.shape[-1])
    module = backbones.build(name, dtype=dtype, purpose="frozen")
    pooled = _pooled(module, variables, variables["params"], x, split, dtype)
    return np.asarray(jax.nn.softmax(((pooled - mean) / std) @ head))


def time_top(name: str, split: str, image_size: int, batch: int, dtype) -> float:
    """Seconds of :data:`TRAIN_STEPS` SGD steps of the trained part in one ``lax.scan``
    (its convs as tuned for ``dtype``)."""
    module, variables, x = _top_parts(name, split, image_size, batch, dtype)

    def steps(params, x):  # x an argument, not a constant XLA would fold
        def loss(params):
            return jnp.mean(jnp.square(_pooled(module, variables, params, x, split, dtype)))

        def step(params, _):
            g = jax.grad(loss)(params)
            return jax.tree.map(lambda p, d: p - 1e-3 * d, params, g), None
        return lax.scan(step, params, None, length=TRAIN_STEPS)[0]

    return best_seconds(jax.jit(steps), (variables["params"], x))


def tune_dtype(name: str, split: str, image_size: int, batch: int, path=None) -> dict:
    """Measure and cache ``model.dtype="auto"``'s decision for this model part."""
    seconds = {dt: time_top(name, split, image_size, batch, jnp.dtype(dt))
               for dt in ("float32", "bfloat16")}
    probs = {dt: top_probabilities(name, split, image_size, batch, jnp.dtype(dt))
             for dt in ("float32", "bfloat16")}
    diff = float(np.abs(probs["bfloat16"] - probs["float32"]).max())
    entry = {"dtype": choose_dtype(seconds, diff), "seconds": seconds, "max_prob_diff": diff}
    data = tuned.read(path)
    key = tuned.model_key(name, split, image_size)
    tuned.write(dict(data, dtypes={**data["dtypes"], key: entry}), path)
    return entry


# ----------------------------------------------------------------------------- entry point
def applies(model_spec) -> bool:
    """Whether the run tunes: ``conv_impl="auto"`` on CPU, in a single process."""
    return (model_spec.conv_impl == "auto" and jax.default_backend() == "cpu"
            and jax.process_count() == 1)


def tune(model_spec, image_size: int, batch: int, *, timer: Timer = time_layer,
         budget_s: float = TUNE_BUDGET_S) -> float:
    """Measure what this machine's cache lacks for ``model_spec`` (a ModelSpec) at
    ``image_size`` and training batch ``batch``; returns the seconds spent (0.0 when the
    cache had everything, or when tuning does not apply: :func:`applies`)."""
    if not applies(model_spec):
        return 0.0
    from handjax.console import say
    t = time.perf_counter()
    split = model_spec.split or backbones.DEFAULT_TRAINABLE_FROM[model_spec.name]
    dtypes = ("float32", "bfloat16") if model_spec.dtype == "auto" else (model_spec.dtype,)
    key = tuned.model_key(model_spec.name, split, image_size)
    done = f"{key}/b{batch}/{'+'.join(dtypes)}"
    if tuned.read().get("complete", {}).get(done):  # skips tracing the model (~0.5 s)
        return 0.0
    layers = [l for dt in dtypes
              for l in model_layers(model_spec.name, jnp.dtype(dt), image_size, split)]
    measured = tune_layers(layers, batch, timer=timer, budget_s=budget_s)
    left = sum(l["key"] not in tuned.read()["layers"] for l in layers)
    if (model_spec.dtype == "auto" and tuned.dtype_choice(key) is None and not left
            and time.perf_counter() - t < budget_s):  # each dtype with its own choices
        tune_dtype(model_spec.name, split, image_size, batch)
    if not left and (model_spec.dtype != "auto" or tuned.dtype_choice(key) is not None):
        data = tuned.read()
        tuned.write(dict(data, complete={**data.get("complete", {}), done: True}))
    seconds = time.perf_counter() - t
    if measured or model_spec.dtype == "auto" and seconds > 0.5:
        say(f"conv tuning: {len(measured)} conv shapes measured in {seconds:.1f} s"
            + (f" ({left} left to the next run)" if left else "")
            + f"; cached in {tuned.cache_path()}")
    return seconds
