"""handjax.models.kernels.tuning and tuned: the tuner keeps the argmin of what it measured (a fake
timer pins the definition), its cache round-trips and is keyed by machine and layer, a
corrupt cache is one line and re-tuned, and "auto" runs what was measured while "table"
stays the table."""
import json
import os

import jax
import jax.numpy as jnp
import pytest

from handjax import config as configs
from handjax.models.kernels import convs, plan as tuned, tuning


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty HANDJAX_CACHE (a path no earlier test read)."""
    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _layers(image_size=16):
    return tuning.model_layers("vgg16", jnp.float32, image_size, "block4_pool")


class FakeTimer:
    """Seconds from a fixed table per algorithm (per layer key, where given); records calls."""

    def __init__(self, seconds, per_key=None):
        self.seconds, self.per_key, self.calls = seconds, per_key or {}, []

    def __call__(self, layer, algorithm, batch):
        self.calls.append((layer["key"], algorithm, batch))
        return self.per_key.get(layer["key"], self.seconds)[algorithm]


def test_model_layers_and_candidates():
    layers = _layers()
    keys = [l["key"] for l in layers]
    assert len(keys) == len(set(keys))
    trained = [l for l in layers if l["purpose"] == "train"]
    # vgg16 after block4_pool: block5's three 512->512 convs share one key at 16 px (1x1 map)
    assert [l["key"] for l in trained] == ["train/float32/1x1x512->512/k3x3/s1"]
    assert tuning.candidates(trained[0]) == ("im2col", "mmgrad", "winograd", "winograd4", "matmul")
    frozen = [l for l in layers if l["purpose"] == "frozen"]
    assert all(tuning.candidates(l) == ("xla", "im2col", "winograd", "winograd4") for l in frozen)
    assert frozen[-1]["in_shape"] == (16, 16, 3)  # least work last
    assert tuning.batch_for(trained[0], 16) == 16


def test_tuner_picks_the_argmin_of_its_measurements(cache):
    layers = _layers()
    slow = dict(xla=3.0, im2col=2.0, mmgrad=1.0, winograd=0.5, winograd4=0.7, matmul=4.0)
    frozen_key = next(l["key"] for l in layers if l["purpose"] == "frozen")
    timer = FakeTimer(slow, {frozen_key: dict(xla=0.1, im2col=0.2, winograd=0.3, winograd4=0.4)})
    measured = tuning.tune_layers(layers, 16, timer=timer)
    assert set(measured) == {l["key"] for l in layers}
    for key, entry in measured.items():
        seconds = entry["seconds"]
        assert entry["algorithm"] == min(seconds, key=seconds.get)
    assert measured["train/float32/1x1x512->512/k3x3/s1"]["algorithm"] == "winograd"
    assert measured[frozen_key]["algorithm"] == "xla"
    assert tuning.pick({"a": 1.0, "b": 1.0}) == "a"  # a tie keeps the first listed


def test_cache_round_trips_and_later_runs_measure_nothing(cache):
    layers = _layers()
    timer = FakeTimer(dict(xla=3.0, im2col=2.0, mmgrad=1.0, winograd=0.5, winograd4=0.7, matmul=4.0))
    tuning.tune_layers(layers, 16, timer=timer)
    path = tuned.cache_path()
    assert path.parent == cache / "tuning"
    on_disk = json.loads(path.read_text())
    assert on_disk["machine"] == tuned.machine()
    again = FakeTimer(timer.seconds)
    assert tuning.tune_layers(layers, 16, timer=again) == {} and again.calls == []
    key = layers[0]["key"]
    assert tuned.layer_choice(key) == on_disk["layers"][key]["algorithm"]
    # What is on disk counts (another process may have written it): edited, it is reread.
    on_disk["layers"][key]["algorithm"] = "im2col"
    path.write_text(json.dumps(on_disk))
    os.utime(path, ns=(0, 10**18))  # a surely different mtime
    assert tuned.layer_choice(key) == "im2col"


def test_a_different_key_re_tunes(cache):
    timer = FakeTimer(dict(xla=1.0, im2col=2.0, mmgrad=3.0, winograd=4.0, winograd4=4.5, matmul=5.0))
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


@pytest.mark.parametrize("text", ["{not json", '{"schema": 1, "layers": []}', "[]"])
def test_corrupt_cache_is_one_line_and_re_tuned(cache, text):
    path = tuned.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(text)
    lines = []
    assert tuned.read(path, say=lines.append)["layers"] == {}
    assert len(lines) == 1 and "unreadable" in lines[0]
    timer = FakeTimer(dict(xla=1.0, im2col=2.0, mmgrad=3.0, winograd=4.0, winograd4=4.5, matmul=5.0))
    assert tuning.tune_layers(_layers(), 16, timer=timer)
    assert json.loads(path.read_text())["schema"] == tuned.SCHEMA


def test_budget_stops_starting_new_layers(cache):
    layers = _layers()
    ticks = iter(range(100))
    timer = FakeTimer(dict(xla=1.0, im2col=2.0, mmgrad=3.0, winograd=4.0, winograd4=4.5, matmul=5.0))
    measured = tuning.tune_layers(layers, 16, timer=timer, budget_s=6.5,
                                  clock=lambda: float(next(ticks)))
    # One clock reading per candidate: the train layer's 5 (t = 1..5) and the first frozen
    # layer's 4 (t = 6, then 7 > 6.5: not started, so that layer is not kept).
    assert list(measured) == [layers[0]["key"]] and len(timer.calls) == 6
    assert set(json.loads(tuned.cache_path().read_text())["layers"]) == {layers[0]["key"]}


def test_auto_runs_the_measured_choice_and_table_the_table(cache):
    layer = convs.Conv(8, name="c")
    x = jax.ShapeDtypeStruct((2, 6, 6, 8), jnp.float32)
    key = tuned.layer_key("train", "float32", (6, 6, 8), 8, (3, 3), 1, False)
    table = convs.conv_policy("cpu", 36, jnp.float32, "train", winograd_ok=True)
    other = "xla" if table != "xla" else "im2col"
    tuned.write(dict(tuned.empty(tuned.machine()), layers={key: {"algorithm": other}}))

    def ran(impl):
        with convs.record_impls() as seen:
            jax.eval_shape(layer.clone(impl=impl).init, jax.random.key(0), x)
        return seen[0][1]

    if jax.default_backend() == "cpu":
        assert ran("auto") == other
    assert ran("table") == table


def test_choose_dtype_needs_speed_and_agreement():
    fast = {"float32": 2.0, "bfloat16": 1.0}
    slow = {"float32": 1.0, "bfloat16": 2.0}
    assert tuning.choose_dtype(fast, 0.01) == "bfloat16"
    assert tuning.choose_dtype(fast, 0.03) == "float32"   # faster, but disagrees
    assert tuning.choose_dtype(slow, 0.0) == "float32"


def test_conv_impl_config_key_is_range_checked():
    c = configs.cell("vgg16", "categorical", "smoke")
    assert c.model.conv_impl == "table"  # smoke cells (and the golden tests) never tune
    c.model.conv_impl = "fastest"
    with pytest.raises(configs.ConfigError, match="conv_impl"):
        configs.parse_run(c)
    assert configs.get_config().model.conv_impl == "auto"


def test_tune_skips_without_auto(cache):
    spec = configs.parse_run(configs.cell("vgg16", "categorical", "smoke")).model
    assert tuning.tune(spec, 32, 8, timer=None) == 0.0
    assert not tuned.cache_path().exists()


def test_tune_with_dtype_auto_decides_and_compute_dtype_reads_it(cache):
    if jax.default_backend() != "cpu":
        pytest.skip("tuning runs on CPU only")
    from handjax.models import classifier
    c = configs.cell("vgg16", "categorical", "smoke")
    c.model.conv_impl, c.model.dtype = "auto", "auto"
    model = configs.parse_run(c).model
    timer = FakeTimer(dict(xla=3.0, im2col=2.0, mmgrad=1.0, winograd=0.5, winograd4=0.7, matmul=4.0))
    assert tuning.tune(model, 16, 4, timer=timer, budget_s=1e9) > 0
    assert {k.split("/")[1] for k, _, _ in timer.calls} == {"float32", "bfloat16"}
    key = tuned.model_key("vgg16", "block4_pool", 16)
    entry = tuned.read()["dtypes"][key]
    assert entry["dtype"] == tuning.choose_dtype(entry["seconds"], entry["max_prob_diff"])
    assert classifier.compute_dtype("auto", key) == jnp.dtype(entry["dtype"])
    # Read back by a later run: nothing measured again, the model not even traced.
    again = FakeTimer(timer.seconds)
    assert tuning.tune(model, 16, 4, timer=again) == 0.0
    assert again.calls == []
    assert tuned.read()["complete"] == {f"{key}/b4/float32+bfloat16": True}


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
