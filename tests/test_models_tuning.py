"""handjax.models.kernels.tuning and plan: the margin rule (a candidate replaces the table's
choice only when >= 5% faster on the median of >= 3 interleaved pairs; a fake, noisy timer
pins it), the bound that leaves every conv decided, the cache (round-trips, keyed by machine
and layer, a corrupt one is one line and re-tuned), a plan resolved once, and "auto" running
the plan's choices while "table" stays the table."""
import json
import os

import jax
import jax.numpy as jnp
import pytest

from handjax import config as configs
from handjax.models.kernels import convs, plan as tuned, tuning
from handjax.models.kernels.plan import ConvPlan


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty HANDJAX_CACHE (a path no earlier test read)."""
    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _layers(image_size=16):
    return tuning.model_layers("vgg16", jnp.float32, image_size, "block4_pool")


class FakeTimer:
    """A :data:`tuning.Timer` from fixed seconds per algorithm (per layer key, where given):
    each value a number, or a list of the successive timed runs' seconds (noise). Records
    the programs "compiled" (``calls``) and the runs timed (``runs``)."""

    def __init__(self, seconds, per_key=None):
        self.seconds, self.per_key, self.calls, self.runs = seconds, per_key or {}, [], []

    def __call__(self, layer, algorithm, batch):
        self.calls.append((layer["key"], algorithm, batch))
        value = self.per_key.get(layer["key"], self.seconds)[algorithm]
        times = iter(value) if isinstance(value, list) else None

        def once():
            self.runs.append((layer["key"], algorithm))
            return next(times) if times is not None else value
        return once


FLAT = dict(xla=1.0, im2col=1.0, mmgrad=1.0, winograd=1.0, winograd4=1.0, matmul=1.0)


def _table(layer):
    return layer["algorithm"]


def test_model_layers_and_candidates():
    layers = _layers()
    keys = [l["key"] for l in layers]
    assert len(keys) == len(set(keys))
    trained = [l for l in layers if l["purpose"] == "train"]
    # vgg16 after block4_pool: block5's three 512->512 convs share one key at 16 px (1x1 map)
    assert [l["key"] for l in trained] == ["train/float32/1x1x512->512/k3x3/s1"]
    assert tuning.candidates(trained[0]) == ("im2col", "mmgrad", "winograd", "matmul")
    frozen = [l for l in layers if l["purpose"] == "frozen"]
    assert all(tuning.candidates(l) == ("xla", "im2col", "winograd", "winograd4") for l in frozen)
    assert frozen[-1]["in_shape"] == (16, 16, 3)  # least work last
    assert tuning.batch_for(trained[0], 16) == 16
    # each layer carries the table's choice, the baseline every candidate must beat
    for l in layers:
        h, w, cin = l["in_shape"]
        assert l["algorithm"] == convs.conv_algorithm(
            "table", jax.default_backend(), h * w, jnp.float32, l["purpose"],
            kernel_size=l["kernel_size"], strides=l["strides"], depthwise=l["depthwise"],
            in_channels=cin)


def test_margin_rule():
    """A candidate replaces the table's choice only at >= 5% faster on the median ratio."""
    assert tuning.decide("im2col", {}) == "im2col"
    assert tuning.decide("im2col", {"mmgrad": 0.96}) == "im2col"       # 4% faster: not enough
    assert tuning.decide("im2col", {"mmgrad": 0.95}) == "mmgrad"
    assert tuning.decide("im2col", {"mmgrad": 0.9, "matmul": 0.8}) == "matmul"
    assert tuning.decide("im2col", {"a": 0.8, "b": 0.8}) == "a"        # a tie: the first listed
    ratio = lambda t, c: tuning.interleaved_ratio(iter(t).__next__, iter(c).__next__)  # noqa: E731
    assert ratio([1.0, 1.0, 1.0], [0.9, 0.8, 0.7]) == pytest.approx(0.8)   # the median
    # two pairs lost of three: the median is decided, the third pair is not timed
    table, cand = [1.0, 1.0, 1.0], [1.2, 1.1, 0.1]
    t, c = iter(table), iter(cand)
    assert tuning.interleaved_ratio(t.__next__, c.__next__) == pytest.approx(1.15)
    assert list(c) == [0.1]


def test_a_noisy_timing_keeps_the_table(cache, monkeypatch):
    """Load that slows one table run 3x, or speeds one candidate run 2x, makes a single
    timing pick the candidate; the median of three interleaved pairs keeps the table, while
    a candidate 20% faster in every pair replaces it."""
    layers = [l for l in _layers() if l["purpose"] == "train"]
    key, table = layers[0]["key"], _table(layers[0])
    other = next(a for a in tuning.candidates(layers[0]) if a != table)
    monkeypatch.setitem(tuning.CANDIDATES, "train", (table, other))   # one comparison
    for noisy in (dict(FLAT, **{table: [3.0, 1.0, 1.0], other: [1.0, 1.02, 1.01]}),
                  dict(FLAT, **{table: [1.0, 1.0, 1.0], other: [0.5, 1.01, 1.02]})):
        timer = FakeTimer(noisy)
        entry = tuning.tune_layers(layers, 16, timer=timer, again=True,
                                   path=cache / "noisy.json")[key]
        assert entry["how"] == "measured" and entry["algorithm"] == table
        assert entry["ratios"][other] > 1 - tuning.MARGIN
        assert timer.runs == [(key, table), (key, other)] * 3     # interleaved pairs
        single = {a: next(iter(noisy[a])) for a in (table, other)}   # one timing each
        assert min(single, key=single.get) == other                 # ... would have moved
        (cache / "noisy.json").unlink()
    clear = FakeTimer(dict(FLAT, **{other: 0.8}))
    entry = tuning.tune_layers(layers, 16, timer=clear)[key]
    assert entry["algorithm"] == other and entry["ratios"][other] == pytest.approx(0.8)
    assert tuned.cached_layer(key) == other


def test_cache_round_trips_and_later_runs_measure_nothing(cache):
    layers = _layers()
    timer = FakeTimer(FLAT)
    tuning.tune_layers(layers, 16, timer=timer)
    path = tuned.cache_path()
    assert path.parent == cache / "tuning"
    on_disk = json.loads(path.read_text())
    assert on_disk["machine"] == tuned.machine()
    assert {k: v["algorithm"] for k, v in on_disk["layers"].items()} == {
        l["key"]: _table(l) for l in layers}   # nothing won: the table everywhere
    again = FakeTimer(FLAT)
    assert tuning.tune_layers(layers, 16, timer=again) == {} and again.calls == []
    key = layers[0]["key"]
    # What is on disk counts (another process may have written it): edited, it is reread.
    on_disk["layers"][key]["algorithm"] = "im2col"
    path.write_text(json.dumps(on_disk))
    os.utime(path, ns=(0, 10**18))  # a surely different mtime
    assert tuned.cached_layer(key) == "im2col"


def test_a_different_key_re_tunes(cache):
    timer = FakeTimer(FLAT)
    tuning.tune_layers(_layers(16), 16, timer=timer)
    n = len(timer.calls)
    tuning.tune_layers(_layers(32), 16, timer=timer)  # other shapes: measured anew
    assert len(timer.calls) > n
    # Another machine (or JAX version) reads another file, so it measures everything.
    other = dict(tuned.machine(), jax="0.0.0")
    assert tuned.cache_path(other) != tuned.cache_path()
    assert tuned.read(tuned.cache_path(other))["layers"] == {}
    # The dtype is part of a layer's key.
    bf16 = tuning.model_layers("vgg16", jnp.bfloat16, 16, "block4_pool")
    assert not {l["key"] for l in bf16} & {l["key"] for l in _layers(16)}


@pytest.mark.parametrize("text", ["{not json", '{"schema": 2, "layers": []}', "[]",
                                  '{"schema": 1, "layers": {}, "dtypes": {}}'])
def test_corrupt_or_old_cache_is_one_line_and_re_tuned(cache, text):
    path = tuned.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(text)
    lines = []
    assert tuned.read(path, say=lines.append)["layers"] == {}
    assert len(lines) == 1 and "unreadable" in lines[0]
    assert tuning.tune_layers(_layers(), 16, timer=FakeTimer(FLAT))
    assert json.loads(path.read_text())["schema"] == tuned.SCHEMA


def test_the_bound_leaves_the_table_decided(cache):
    """No candidate starts after the bound; the layers left keep the table's choice,
    recorded, so a later run measures nothing; ``again`` measures them."""
    layers = _layers()
    ticks = iter(range(1000))
    timer = FakeTimer(FLAT)
    decided = tuning.tune_layers(layers, 16, timer=timer, budget_s=3.5,
                                 clock=lambda: float(next(ticks)))
    # clock: t=0 start; the train layer: 1 (layer), 2, 3 (two candidates), then 4 > 3.5
    assert set(decided) == {l["key"] for l in layers}
    first, rest = decided[layers[0]["key"]], [decided[l["key"]] for l in layers[1:]]
    assert first["how"] == "measured" and len(first["ratios"]) == 2
    assert all(e["how"] == "budget" and e["algorithm"] == _table(l)
               for e, l in zip(rest, layers[1:]))
    later = FakeTimer(FLAT)
    assert tuning.tune_layers(layers, 16, timer=later) == {} and later.calls == []
    remeasured = tuning.tune_layers(layers, 16, timer=later, again=True)
    assert set(remeasured) == {l["key"] for l in layers[1:]}
    assert all(e["how"] == "measured" for e in remeasured.values())


def test_a_run_s_bound_is_its_share_and_a_short_run_measures_nothing(cache):
    """run_budget: TUNE_BUDGET_S x phase-2 epochs / TUNE_FULL_EPOCHS, capped, and 0 under
    MIN_TUNE_S; a zero bound times nothing (not even the table's program) and records
    every layer as the table's ("budget"), so ``again`` measures them later."""
    full, n = tuning.TUNE_BUDGET_S, tuning.TUNE_FULL_EPOCHS
    assert tuning.run_budget(n) == full and tuning.run_budget(10 * n) == full
    assert tuning.run_budget(n // 2) == pytest.approx(full / 2)
    short = max(e for e in range(n) if full * e / n < tuning.MIN_TUNE_S)
    assert tuning.run_budget(short) == 0.0 and tuning.run_budget(short + 1) > 0
    layers, timer = _layers(), FakeTimer(FLAT)
    decided = tuning.tune_layers(layers, 16, timer=timer, budget_s=0.0,
                                 clock=lambda: 0.0)   # a clock that never moves
    assert timer.calls == []
    assert all(decided[l["key"]] == {"algorithm": _table(l), "how": "budget",
                                     "batch": tuning.batch_for(l, 16)}
               for l in layers if len(tuning.candidates(l)) > 1)


def test_a_short_run_on_a_fresh_machine_plans_the_table_without_tracing(cache, monkeypatch):
    """A zero bound where this machine has measured nothing: the empty plan (the table's
    choices everywhere), decided once (a later run with a bound reads it), and the model
    is not even traced for it; ``again`` measures it."""
    if jax.default_backend() != "cpu":
        pytest.skip("tuning runs on CPU only")
    c = configs.cell("vgg16", "categorical", "smoke")
    c.model.conv_impl = "auto"
    model = configs.parse_run(c).model
    monkeypatch.setattr(tuning, "model_layers", lambda *a: pytest.fail("traced the model"))
    plan, seconds = tuning.resolve_plan(model, 16, 4, budget_s=0.0, timer=FakeTimer(FLAT))
    assert plan == ConvPlan((), "float32", "auto") and seconds == 0.0
    assert tuning.resolve_plan(model, 16, 4, timer=FakeTimer(FLAT)) == (plan, 0.0)
    monkeypatch.undo()
    timer = FakeTimer(FLAT)
    again, _ = tuning.resolve_plan(model, 16, 4, timer=timer, again=True)
    assert timer.calls and again.layers


def test_a_bound_spent_compiling_the_table_measures_nothing():
    """The bound ran out before the first candidate: the layer is the table's, "budget"
    (not "measured" with no ratios), so ``again`` measures it."""
    layer = next(l for l in _layers() if len(tuning.candidates(l)) > 1)
    checks = iter([False, True])   # in time for the table's program, not for a candidate
    entry = tuning.measure_layer(layer, 16, FakeTimer(FLAT), lambda: next(checks))
    assert entry == {"algorithm": _table(layer), "how": "budget",
                     "batch": tuning.batch_for(layer, 16)}


def test_resolve_plan_decides_once_and_later_runs_measure_nothing(cache):
    if jax.default_backend() != "cpu":
        pytest.skip("tuning runs on CPU only")
    c = configs.cell("vgg16", "categorical", "smoke")
    c.model.conv_impl = "auto"
    model = configs.parse_run(c).model
    train_key = "train/float32/1x1x512->512/k3x3/s1"
    layer = next(l for l in _layers() if l["key"] == train_key)
    other = next(a for a in tuning.candidates(layer) if a != _table(layer))
    timer = FakeTimer(FLAT, {train_key: dict(FLAT, **{other: 0.5})})
    plan, seconds = tuning.resolve_plan(model, 16, 4, timer=timer)
    assert seconds > 0 and plan.policy == "auto" and plan.dtype == "float32"
    assert plan.algorithm(train_key) == other
    assert dict(plan.layers) == {l["key"]: (other if l["key"] == train_key else _table(l))
                                 for l in _layers()}
    again = FakeTimer(FLAT)
    assert tuning.resolve_plan(model, 16, 4, timer=again) == (plan, 0.0)
    assert again.calls == []
    # a plan is data: its JSON gives it back
    assert ConvPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_no_auto_no_measuring(cache):
    spec = configs.parse_run(configs.cell("vgg16", "categorical", "smoke")).model
    plan, seconds = tuning.resolve_plan(spec, 32, 8, timer=None)
    assert (plan.layers, plan.policy, plan.machine, seconds) == ((), "table", "", 0.0)
    assert not tuned.cache_path().exists()


def test_auto_runs_the_plan_and_table_the_table():
    layer = convs.Conv(8, name="c")
    x = jax.ShapeDtypeStruct((2, 6, 6, 8), jnp.float32)
    key = tuned.layer_key("train", "float32", (6, 6, 8), 8, (3, 3), 1, False)
    table = convs.conv_policy(jax.default_backend(), 36, jnp.float32, "train", winograd_ok=True)
    other = "xla" if table != "xla" else "im2col"
    plan = ConvPlan(((key, other),), "float32", "auto")
    assert convs.describe(layer.clone(impl="auto", plan=plan), x.shape)["algorithm"] == other
    assert convs.describe(layer.clone(impl="auto"), x.shape)["algorithm"] == table
    assert convs.describe(layer.clone(impl="table", plan=plan), x.shape)["algorithm"] == table


def test_choose_dtype_needs_the_margin_and_agreement():
    assert tuning.choose_dtype(0.5, 0.01) == "bfloat16"
    assert tuning.choose_dtype(0.5, 0.03) == "float32"   # faster, but disagrees
    assert tuning.choose_dtype(0.97, 0.0) == "float32"   # within the margin
    assert tuning.choose_dtype(2.0, 0.0) == "float32"


def test_conv_impl_config_key_is_range_checked():
    c = configs.cell("vgg16", "categorical", "smoke")
    assert c.model.conv_impl == "table"  # smoke cells (and the golden tests) never tune
    c.model.conv_impl = "fastest"
    with pytest.raises(configs.ConfigError, match="conv_impl"):
        configs.parse_run(c)
    assert configs.get_config().model.conv_impl == "auto"


@pytest.mark.slow
def test_dtype_auto_decides_once_with_each_dtype_its_own_plan(cache):
    if jax.default_backend() != "cpu":
        pytest.skip("tuning runs on CPU only")
    from handjax.models import classifier
    c = configs.cell("vgg16", "categorical", "smoke")
    c.model.conv_impl, c.model.dtype = "auto", "auto"
    model = configs.parse_run(c).model
    timer = FakeTimer(FLAT)
    plan, seconds = tuning.resolve_plan(model, 16, 4, timer=timer, budget_s=1e9)
    assert seconds > 0
    assert {k.split("/")[1] for k, _, _ in timer.calls} == {"float32", "bfloat16"}
    key = tuned.model_key("vgg16", "block4_pool", 16)
    entry = tuned.read()["dtypes"][key]
    if "error" in entry:   # bfloat16 cannot run on this XLA:CPU: not chosen
        assert entry["dtype"] == "float32"
    else:
        assert entry["dtype"] == tuning.choose_dtype(entry["ratio"], entry["max_prob_diff"])
    assert plan.dtype == entry["dtype"]
    assert {k.split("/")[1] for k, _ in plan.layers} == {plan.dtype}
    assert classifier.compute_dtype("auto", plan) == jnp.dtype(entry["dtype"])
    # Read back by a later run: nothing measured again, the model not even traced.
    again = FakeTimer(FLAT)
    assert tuning.resolve_plan(model, 16, 4, timer=again) == (plan, 0.0)
    assert again.calls == []


@pytest.mark.parametrize("algorithm", ["winograd", "winograd4"])
def test_frozen_winograd_is_timed_as_the_frozen_programs_run_it(algorithm):
    """The tuner times a frozen Winograd layer with its kernel transformed beforehand (as
    the frozen prefix runs it: no G g G^T in the timed program), to the same outputs."""
    layer = next(l for l in _layers(32) if l["purpose"] == "frozen" and l["in_shape"][-1] == 64)
    fn, (ku, x) = tuning.layer_program(layer, algorithm, 2)
    kernel, u = ku
    assert u.shape == (convs.WINOGRAD_KERNELS[algorithm][0], *kernel.shape[2:])
    timed = jax.make_jaxpr(fn)(ku, x)
    # the only dot_generals left are the batched matmul over the transformed positions
    dots = [e for e in timed.eqns[0].params["jaxpr"].eqns if e.primitive.name == "dot_general"]
    assert [d.invars[1].aval.shape for d in dots] == [u.shape]
    plain = convs.Conv(layer["features"], layer["kernel_size"], layer["strides"], layer["pads"],
                       use_bias=False, impl=algorithm, purpose="frozen")
    ref = plain.apply({"params": {"kernel": kernel}}, x)
    assert jnp.array_equal(fn(ku, x), ref)
