"""The conv tuner: which algorithm (and, for ``model.dtype="auto"``, which dtype) a run's
convs use is decided on the machine, once, and handed to the run as a
:class:`~handjax.models.kernels.plan.ConvPlan`.

    plan, seconds = resolve_plan(model_spec, image_size, batch)   # at the run's boundary

For every distinct conv of the model (its :func:`handjax.models.kernels.plan.layer_key`:
purpose, dtype, shape) that this machine's cache has not decided, the table's algorithm
(:func:`handjax.models.kernels.convs.conv_policy`) and each other applicable candidate are
compiled, then timed in interleaved pairs (table, candidate, table, candidate, ...):

- ``"train"`` convs (the layers phase 2 trains): forward and both gradients, a few SGD
  steps inside one ``lax.scan`` (the epoch program's loop), at the training batch size;
- ``"frozen"`` convs (the prefix computed once per photo view, and the whole backbone's
  pooled features): the forward pass, at the batch :mod:`handjax.train.features` runs them in.

**The margin rule** (:func:`decide`): a candidate replaces the table's choice only when the
median of at least :data:`PAIRS` interleaved (candidate / table) time ratios is at most
``1 - MARGIN`` (5% faster); the fastest such candidate wins, else the table's choice stays.
A timing disturbed by load thus keeps the table: one noisy pair cannot move a median of
three. Pairs stop once the median is decided against the candidate (two losing pairs of
three), so clear losers cost two pairs. ``"eval_folds"`` convs (forward under ``vmap`` over
per-fold weights) keep the table. With ``model.dtype="auto"`` both dtypes are tuned, then
the trained part of the model is timed as a whole in float32 and bfloat16 by the same rule;
bfloat16 is kept only where it wins *and* its class probabilities agree with float32's
within :data:`PROB_TOL` (the bound ``tests/test_bf16.py`` holds the smoke cell to).

**The bound**: one progress bar; no candidate starts after :data:`TUNE_BUDGET_S` seconds,
or a run's share of them (:func:`run_budget`: a short run measures less, or nothing).
The convs left then keep the table's choice, and that is recorded as their decision
(``"how": "budget"``), so the plan is complete after one tuning step: a later run measures
nothing and runs the same plan. ``python -m handjax.tune --config ... --again`` measures
such convs anew with a bound of your choosing. Only ``conv_impl="auto"`` on CPU in a single
process measures: off CPU the table's ``lax.conv`` (cuDNN) is the choice, and processes of
one run must not choose differently.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm.auto import tqdm

from handjax.models import backbones
from handjax.models.frozen import PER_IMAGE_MIN_PIXELS
from handjax.models.kernels import convs, plan as tuned
from handjax.models.kernels.plan import ConvPlan

TUNE_BUDGET_S = 6.0
# A run's first tuning step is bounded by its share of TUNE_BUDGET_S: its phase-2 epochs
# (x repeats) over TUNE_FULL_EPOCHS, and nothing below MIN_TUNE_S (:func:`run_budget`).
TUNE_FULL_EPOCHS = 10
MIN_TUNE_S = 2.0
MARGIN = 0.05            # a candidate must be this much faster than the table's choice ...
PAIRS = 3                # ... on the median of this many interleaved (table, candidate) pairs
PROB_TOL = 0.02
# Candidates per purpose (each kept where it applies to the conv). Training leaves out
# "xla": XLA:CPU's own conv gradients inside a scan body measured 40-50x slower than the
# others (VGG19's 7x7x512 block, 2-core EPYC: 12.5 s against 0.26-0.50 s), and one timing of
# it would spend the whole budget; and "winograd4", whose gradients are autodiff's (no custom
# VJP): on that block it measured 2.0x the table's time after a 3.2 s compile, half the
# bound. A forward pass alone: "mmgrad" is "xla"'s forward, "matmul" im2col's with float32
# accumulation.
CANDIDATES = {"train": ("im2col", "mmgrad", "winograd", "matmul"),
              "frozen": ("xla", "im2col", "winograd", "winograd4")}
TRAIN_STEPS = 2          # SGD steps per timed scan
FROZEN_BATCH = 10        # handjax.models.frozen.frozen_features's batch (and its
                         # one-image-at-a-time maps: PER_IMAGE_MIN_PIXELS)

# timer(layer, algorithm, batch) -> a function that runs the compiled program once and
# returns its seconds (the compilation happens in timer itself, outside every pair).
Timer = Callable[[dict, str, int], Callable[[], float]]


# ----------------------------------------------------------------------------- the layers
def model_layers(name: str, dtype, image_size: int, split: str | None) -> list[dict]:
    """The distinct convs of backbone ``name`` the tuner times (:func:`backbones.conv_layers`
    entries under the table, first of each key; ``"algorithm"`` is the table's choice): the
    layers after ``split`` (None: all) for the "train" purpose, then every layer for the
    "frozen" one; each purpose largest work first."""
    frozen = backbones.build(name, dtype=dtype, conv_impl="table", purpose="frozen")
    trained = backbones.build(name, dtype=dtype, conv_impl="table", purpose="train")
    image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), dtype)
    boundary = image if split is None else convs.eval_shape(lambda x: frozen.init_with_output(
        jax.random.key(0), x, stop=split)[0], image)
    seen = (backbones.conv_layers(trained, boundary, start=split)
            + backbones.conv_layers(frozen, image))
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


def run_budget(epochs: int, budget_s: float = TUNE_BUDGET_S) -> float:
    """The bound of a run's tuning step: ``budget_s`` x ``epochs`` / :data:`TUNE_FULL_EPOCHS`
    (``epochs``: phase-2 epochs x repeats, the work a faster trained conv speeds up), at
    most ``budget_s``, and 0 (measure nothing) below :data:`MIN_TUNE_S`. Measuring costs
    compilations as well as timings: VGG19 at 112 px, 2+1 epochs, spent 9 s tuning and a
    further 6 s compiling the faster plan's epoch to win 3 s in its one phase-2 epoch, while
    a 10-epoch phase 2 wins it ten times."""
    share = budget_s * min(1.0, epochs / TUNE_FULL_EPOCHS)
    return share if share >= MIN_TUNE_S else 0.0


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


def once_timer(fn, args) -> Callable[[], float]:
    """Run ``fn(*args)`` once untimed (it compiles), then return a function that runs it
    once more and gives its seconds."""
    jax.block_until_ready(fn(*args))

    def once() -> float:
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        return time.perf_counter() - t
    return once


def best_seconds(fn, args, repeats: int = 3) -> float:
    """Best of ``repeats`` timed runs after one untimed (compiling) run (the benchmarks')."""
    once = once_timer(fn, args)
    return min(once() for _ in range(repeats))


def layer_timer(layer: dict, algorithm: str, batch: int) -> Callable[[], float]:
    """:func:`layer_program` compiled, as a one-run timer: the default :data:`Timer`."""
    return once_timer(*layer_program(layer, algorithm, batch))


# ----------------------------------------------------------------------------- choosing
def interleaved_ratio(table: Callable[[], float], candidate: Callable[[], float],
                      pairs: int = PAIRS, margin: float = MARGIN) -> float:
    """Median of ``pairs`` (candidate / table) time ratios, each pair timed back to back so
    that load hits both alike; stops early once the median is sure to miss ``1 - margin``
    (most pairs lost), returning the median of the pairs timed."""
    ratios: list[float] = []
    for _ in range(pairs):
        base = table()
        ratios.append(candidate() / base if base > 0 else float("inf"))
        if sum(r > 1 - margin for r in ratios) > pairs // 2:
            break
    return float(statistics.median(ratios))


def decide(table: str, ratios: dict[str, float], margin: float = MARGIN) -> str:
    """The margin rule: the candidate of least median ratio among those at most
    ``1 - margin`` (a tie: the first listed); none: ``table``."""
    winners = {a: r for a, r in ratios.items() if r <= 1 - margin}
    return min(winners, key=winners.get) if winners else table


def measure_layer(layer: dict, train_batch: int, timer: Timer, out_of_time) -> dict:
    """The cache entry of ``layer``: each candidate against the table's choice by
    :func:`interleaved_ratio`, then :func:`decide`. ``out_of_time()``: no candidate starts
    once it is true (those measured still count)."""
    batch, table = batch_for(layer, train_batch), layer["algorithm"]
    others = [a for a in candidates(layer) if a != table]
    if out_of_time() or not others:
        return {"algorithm": table, "how": "budget" if others else "only", "batch": batch}
    base = timer(layer, table, batch)
    ratios = {}
    for algorithm in others:
        if out_of_time():
            break
        ratios[algorithm] = interleaved_ratio(base, timer(layer, algorithm, batch))
    if not ratios:   # the bound ran out while the table's own program compiled
        return {"algorithm": table, "how": "budget", "batch": batch}
    return {"algorithm": decide(table, ratios), "how": "measured", "table": table,
            "ratios": ratios, "batch": batch}


def tune_layers(layers: list[dict], train_batch: int, *, timer: Timer = layer_timer,
                budget_s: float = TUNE_BUDGET_S, path=None, clock=time.perf_counter,
                again: bool = False, desc: str = "tuning convs") -> dict:
    """Decide every layer the cache has not decided (``again``: also those the bound left
    to the table) and write the cache; no candidate starts after ``budget_s`` seconds, and
    the layers left keep the table's choice, recorded (``"how": "budget"``). Returns
    ``{key: entry}`` of the layers decided now."""
    data = tuned.read(path)

    def decided(key):
        entry = data["layers"].get(key)
        return isinstance(entry, dict) and not (again and entry.get("how") == "budget")
    todo = [l for l in layers if not decided(l["key"])]
    if not todo:
        return {}
    start = clock()
    out_of_time = lambda: budget_s <= 0 or clock() - start > budget_s   # noqa: E731
    entries = {}
    with tqdm(todo, desc=f"{desc} (at most {budget_s:.0f} s)", leave=False, unit="conv",
              disable=budget_s <= 0) as bar:
        for layer in bar:
            entries[layer["key"]] = measure_layer(layer, train_batch, timer, out_of_time)
    data = dict(tuned.read(path), layers={**tuned.read(path)["layers"], **entries})
    tuned.write(data, path)
    return entries


# ----------------------------------------------------------------------------- dtype
def choose_dtype(ratio: float, max_prob_diff: float, margin: float = MARGIN) -> str:
    """bfloat16 only where it won by the margin rule (``ratio``: the median bfloat16 /
    float32 time ratio, :func:`interleaved_ratio`) and its probabilities stayed within
    :data:`PROB_TOL` of float32's; else float32."""
    return "bfloat16" if ratio <= 1 - margin and max_prob_diff <= PROB_TOL else "float32"


def _top_parts(name: str, split: str, image_size: int, batch: int, dtype, plan=None):
    """The trained part (layers after ``split``) in ``dtype`` (its convs by ``plan``),
    float32 weights, a fixed random head and input: (module, variables, x)."""
    module = backbones.build(name, dtype=dtype, purpose="train", conv_plan=plan)
    image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    shape = convs.eval_shape(lambda x: backbones.build(name, purpose="frozen").init_with_output(
        jax.random.key(0), x, stop=split)[0], image).shape
    x = jax.nn.relu(jax.random.normal(jax.random.key(2), (batch, *shape[1:]), jnp.float32))
    variables = module.init(jax.random.key(0), x[:1].astype(dtype), start=split)
    return module, variables, x


def _pooled(module, variables, params, x, split, dtype):
    feats = module.apply({**variables, "params": params}, x.astype(dtype), start=split,
                         train=False)
    return jnp.mean(feats.astype(jnp.float32), axis=(1, 2))


def top_probabilities(name: str, split: str, image_size: int, batch: int, dtype,
                      plan=None) -> np.ndarray:
    """Class probabilities of the trained part on fixed random inputs and weights: its
    pooled features, standardised (float32 statistics), through a fixed 3-class head whose
    logits spread like a trained one's (std ~3)."""
    module, variables, x = _top_parts(name, split, image_size, batch, jnp.float32)
    ref = _pooled(module, variables, variables["params"], x, split, jnp.float32)
    mean, std = ref.mean(0), ref.std(0) + 1e-6
    head = 3.0 * jax.random.normal(jax.random.key(3), (ref.shape[-1], 3)) / np.sqrt(ref.shape[-1])
    module = backbones.build(name, dtype=dtype, purpose="frozen", conv_plan=plan)
    pooled = _pooled(module, variables, variables["params"], x, split, dtype)
    return np.asarray(jax.nn.softmax(((pooled - mean) / std) @ head))


def top_timer(name: str, split: str, image_size: int, batch: int, dtype,
              plan=None) -> Callable[[], float]:
    """:data:`TRAIN_STEPS` SGD steps of the trained part in one ``lax.scan`` (its convs by
    ``plan``), compiled, as a one-run timer."""
    module, variables, x = _top_parts(name, split, image_size, batch, dtype, plan)

    def steps(params, x):  # x an argument, not a constant XLA would fold
        def loss(params):
            return jnp.mean(jnp.square(_pooled(module, variables, params, x, split, dtype)))

        def step(params, _):
            g = jax.grad(loss)(params)
            return jax.tree.map(lambda p, d: p - 1e-3 * d, params, g), None
        return lax.scan(step, params, None, length=TRAIN_STEPS)[0]

    return once_timer(jax.jit(steps), (variables["params"], x))


def tune_dtype(name: str, split: str, image_size: int, batch: int, plans: dict,
               path=None) -> dict:
    """Measure and cache ``model.dtype="auto"``'s decision for this model part, each dtype
    with its own conv plan (``plans``: dtype name -> ConvPlan)."""
    args = (name, split, image_size, batch)
    f32 = top_timer(*args, jnp.float32, plans["float32"])
    try:
        bf16 = top_timer(*args, jnp.bfloat16, plans["bfloat16"])
    except jax.errors.JaxRuntimeError as e:
        # XLA:CPU lacks some bf16 dot forms (e.g. "BF16 x BF16 = F32" in a DotThunk, seen
        # for VGG's 1x1 top maps): a dtype that cannot run here is not chosen.
        entry = {"dtype": "float32", "how": "measured", "error": str(e).splitlines()[0]}
        _cache_dtype(tuned.model_key(name, split, image_size), entry, path)
        return entry
    ratio = interleaved_ratio(f32, bf16)
    probs = {dt: top_probabilities(*args, jnp.dtype(dt), plans[dt]) for dt in tuned.DTYPES}
    diff = float(np.abs(probs["bfloat16"] - probs["float32"]).max())
    entry = {"dtype": choose_dtype(ratio, diff), "how": "measured", "ratio": ratio,
             "max_prob_diff": diff}
    _cache_dtype(tuned.model_key(name, split, image_size), entry, path)
    return entry


def _cache_dtype(key: str, entry: dict, path=None) -> None:
    data = tuned.read(path)
    tuned.write(dict(data, dtypes={**data["dtypes"], key: entry}), path)


def _cache_plan(done: str, plan: ConvPlan, path=None) -> None:
    """The cache's whole plan for one model part, batch and dtypes (``done``)."""
    data = tuned.read(path)
    tuned.write(dict(data, plans={**data.get("plans", {}), done: plan.to_json()}), path)


# ----------------------------------------------------------------------------- the plan
def plan_for(layers: list[dict], dtype: str, policy: str = "auto", path=None) -> ConvPlan:
    """The plan of ``layers`` of compute dtype ``dtype``: the cache's decision per key (the
    table's where it has none), measured on this machine."""
    cached = tuned.read(path)["layers"]
    pairs = {l["key"]: (cached.get(l["key"]) or {}).get("algorithm") or l["algorithm"]
             for l in layers if l["dtype"] == dtype}
    return ConvPlan(tuple(sorted(pairs.items())), dtype, policy,
                    tuned.canonical(tuned.machine()))


def applies(model_spec) -> bool:
    """Whether the run measures: ``conv_impl="auto"`` on CPU, in a single process."""
    return (model_spec.conv_impl == "auto" and jax.default_backend() == "cpu"
            and jax.process_count() == 1)


def unmeasured_dtype(model_spec) -> str:
    """The compute dtype where nothing is measured: ``model.dtype`` itself, or for "auto"
    bfloat16 where it pays (:func:`convs.bf16_pays`), else float32."""
    if model_spec.dtype != "auto":
        return model_spec.dtype
    return "bfloat16" if convs.bf16_pays(jax.default_backend()) else "float32"


def resolve_plan(model_spec, image_size: int, batch: int, *, timer: Timer | None = None,
                 budget_s: float = TUNE_BUDGET_S, again: bool = False,
                 path=None) -> tuple[ConvPlan, float]:
    """The run's conv plan for ``model_spec`` (a ModelSpec) at ``image_size`` and training
    batch ``batch``, and the seconds spent measuring (0.0 when this machine's cache had it
    all). Where tuning does not apply (:func:`applies`) the plan is empty: the table's
    choices, in :func:`unmeasured_dtype`. Else the cache's plan for this model part, or,
    the first time, one bounded tuning step (``budget_s``; ``again``: re-measure what an
    earlier bound left to the table) that leaves the whole plan decided and cached."""
    if not applies(model_spec):
        return ConvPlan((), unmeasured_dtype(model_spec), model_spec.conv_impl), 0.0
    split = model_spec.split or backbones.DEFAULT_TRAINABLE_FROM[model_spec.name]
    dtypes = tuned.DTYPES if model_spec.dtype == "auto" else (model_spec.dtype,)
    key = tuned.model_key(model_spec.name, split, image_size)
    done = f"{key}/b{batch}/{'+'.join(dtypes)}"
    cached = tuned.read(path).get("plans", {}).get(done)
    if cached is not None and not again:   # skips even tracing the model
        return ConvPlan.from_json(cached, str(tuned.cache_path() if path is None else path)), 0.0
    where = tuned.cache_path() if path is None else path
    if budget_s <= 0 and not again and not tuned.read(path)["layers"]:
        # A short run on a machine that has measured nothing: the table's choices, without
        # tracing the model for them (an empty plan is the table), decided once all the same.
        plan = ConvPlan((), dtypes[0] if len(dtypes) == 1 else unmeasured_dtype(model_spec),
                        model_spec.conv_impl)   # machine "": nothing measured
        _cache_plan(done, plan, path)
        from handjax.console import say
        say("conv plan: the table's (a run this short would not win back the measuring; "
            f"`python -m handjax.tune --config ... --again` measures it); cached in {where}")
        return plan, 0.0
    timer = layer_timer if timer is None else timer
    t = time.perf_counter()
    layers = {dt: model_layers(model_spec.name, jnp.dtype(dt), image_size, split)
              for dt in dtypes}
    spent = lambda: time.perf_counter() - t   # noqa: E731
    measured = tune_layers([l for dt in dtypes for l in layers[dt]], batch, timer=timer,
                           budget_s=budget_s, path=path, again=again)
    plans = {dt: plan_for(layers[dt], dt, path=path) for dt in dtypes}
    dtype = dtypes[0]
    if model_spec.dtype == "auto":
        entry = tuned.read(path)["dtypes"].get(key)
        if entry is None or again and entry.get("how") == "budget":
            entry = (tune_dtype(model_spec.name, split, image_size, batch, plans, path)
                     if spent() < budget_s else {"dtype": unmeasured_dtype(model_spec),
                                                 "how": "budget"})
            _cache_dtype(key, entry, path)
        dtype = entry["dtype"]
    plan = plans[dtype]
    _cache_plan(done, plan, path)
    seconds = spent()
    from handjax.console import say
    left = sum(e.get("how") == "budget" for e in measured.values())
    if budget_s <= 0:
        say(f"conv plan: the table's algorithms for {left} conv shapes (a run this short "
            "would not win back the measuring; `python -m handjax.tune --config ... --again` "
            f"measures them); cached in {where}")
        return plan, seconds
    say(f"conv plan: {len(measured)} conv shapes decided in {seconds:.1f} s"
        + (f" ({left} kept the table: the {budget_s:.0f} s bound ran out)" if left else "")
        + f"; cached in {where}")
    return plan, seconds
