"""Fold trainer: fold mapping, resume, determinism, guards, SVM stage, cached == plain.

Everything runs VGG16 at 32 px on 30 synthetic images (random weights), 2+1 epochs, so a
run takes seconds once compiled; runs share a persistent compilation cache.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from handjax import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import base  # noqa: E402


def tiny_config(**train_overrides):
    c = base.cell("vgg16", "categorical", "smoke")
    for k, v in train_overrides.items():
        setattr(c.train, k, v)
    return c


@pytest.fixture(scope="module")
def workroot(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def reference(workroot):
    """One uninterrupted tiny run; other tests compare against it."""
    workdir = workroot / "reference"
    results = train.run(tiny_config(), workdir)
    return workdir, results


def _results(workdir):
    return json.loads((Path(workdir) / "results.json").read_text())


def test_results_layout(reference):
    workdir, results = reference
    assert results == _results(workdir)
    assert results["n_folds"] == 5 and results["data"]["n"] == 30
    assert results["data"]["class_counts"] == {"normal": 10, "heberden": 10, "ra": 10}
    for name in train.DECISIONS:
        d = results["decisions"][name]
        for key in train.METRIC_KEYS:
            per_fold = d["per_fold"][key]
            assert len(per_fold) == 5
            assert np.isclose(d["mean"][key], np.mean(per_fold))
            assert np.isclose(d["std"][key], np.std(per_fold))
        acc = np.array(d["per_fold"]["accuracy"])
        assert ((0 <= acc) & (acc <= 1)).all()
        plus = np.array(d["per_fold"]["custom_plus"])
        assert ((0 <= plus) & (plus <= 2)).all()
        cms = np.array(d["confusion"])
        assert cms.shape == (5, 3, 3)
        assert cms.sum() == 30                       # every image tested exactly once
        assert (cms.sum(axis=(0, 2)) == 10).all()    # ... and its true class kept
        assert np.allclose(acc, np.trace(cms, axis1=1, axis2=2) / cms.sum(axis=(1, 2)))
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 5 * 3                       # folds x (2 + 1) epochs
    assert {(l["phase"], l["epoch"]) for l in lines} == {(1, 0), (1, 1), (2, 0)}
    assert (workdir / "results.md").exists() and (workdir / "config.json").exists()


def test_same_seed_same_results(reference, workroot):
    _, results = reference
    again = train.run(tiny_config(), workroot / "again")
    assert again == results


def test_resume_after_interruption_equals_uninterrupted(reference, workroot, monkeypatch):
    from handjax import checkpoint
    workdir = workroot / "interrupted"
    real_save = checkpoint.save
    calls = []

    def save_then_die(manager, step, state, wait=True):
        real_save(manager, step, state, wait)
        calls.append(step)
        if step == 2:                                # killed after phase 1
            raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_config(checkpoint_secs=0.0), workdir)   # a checkpoint every epoch
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert calls == [1, 2]
    assert not (workdir / "results.json").exists()
    resumed = train.run(tiny_config(checkpoint_secs=0.0), workdir)
    assert resumed == reference[1]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 15                          # no duplicated epochs after resume


def test_final_checkpoint_holds_no_optimiser_state_and_a_rerun_restores_it(
        reference, prepared, workroot):
    import shutil
    from handjax import checkpoint
    workdir, results = reference
    config, prep = prepared
    states = train.to_phase2(train.initial_states(prep, config), prep, config)
    full = len(jax.tree.leaves(states))
    light = len(jax.tree.leaves(train.saved_states(states, final=True)))
    assert light < full
    finished = workroot / "finished"
    shutil.copytree(workdir, finished)
    (finished / "results.json").unlink()
    manager = checkpoint.manager(finished)
    assert checkpoint.n_arrays(manager, checkpoint.latest(manager)) == light
    checkpoint.close(manager)
    assert train.run(tiny_config(), finished) == results    # evaluates the restored folds
    assert len((finished / "metrics.jsonl").read_text().splitlines()) == 15


def test_per_image_prefix_equals_one_batched_pass():
    from handjax import backbones
    module, variables = backbones.load("vgg16", None, seed=0)
    views = (np.random.default_rng(0).random((1, 3, 56, 56, 3)) * 255).astype(np.uint8)
    # 56 px: block1_pool's output is 28x28, the last map that large
    assert train.per_image_boundary(module, variables, (56, 56), "block4_pool",
                                    jnp.float32) == "block1_pool"
    kw = dict(dtype=jnp.float32)
    batched = train.frozen_features(module, variables, "vgg16", views, "block4_pool",
                                    per_image=False, **kw)
    per_image = train.frozen_features(module, variables, "vgg16", views, "block4_pool",
                                      per_image=True, **kw)
    assert batched.shape == (1, 3, 3, 3, 512)
    np.testing.assert_allclose(per_image, batched, rtol=1e-5,
                               atol=1e-5 * np.abs(batched).max())


def test_other_config_in_same_workdir_is_refused(reference):
    workdir, _ = reference
    c = tiny_config(lr1=0.5)
    with pytest.raises(train.TrainingError, match="train.lr1"):
        train.run(c, workdir)


def test_nan_guard_names_fold_phase_step(workroot, monkeypatch):
    def poisoned(config):
        return lambda logits, labels: jnp.full(labels.shape, jnp.nan)
    monkeypatch.setattr(train, "make_loss", poisoned)
    with pytest.raises(train.TrainingError, match=r"fold 0, phase 1, epoch 0, step 0"):
        train.run(tiny_config(), workroot / "nan")


@pytest.fixture(scope="module")
def prepared():
    c = tiny_config()
    return c, train.prepare(c)


def _one_epoch(states, prep, config, phase, fold_map):
    inputs = prep.inputs1 if phase == 1 else prep.inputs2
    batches = train.epoch_batches([tr for tr, _ in prep.folds], batch_size=8,
                                  n_views=inputs.shape[0], seed=0, phase=phase, epoch=0)
    fn = jax.jit(lambda s, x, y, b, k: train.epoch_fn(s, x, y, b, k, fold_map=fold_map))
    return fn(states, inputs, jnp.asarray(prep.examples.labels), batches,
              jax.random.key(1))


@pytest.mark.parametrize("phase", [1, 2])
def test_vmap_map_and_loop_agree(prepared, phase):
    config, prep = prepared
    outs = {}
    for kind in ("vmap", "map", "loop"):
        states = train.initial_states(prep, config)
        if phase == 2:
            states = train.to_phase2(states, prep, config)
        outs[kind], _ = _one_epoch(states, prep, config, phase, kind)
    for kind in ("map", "loop"):
        # Same math, different batching of the kernels: float32 rounding only.
        chex.assert_trees_all_close(outs[kind].params, outs["vmap"].params,
                                    rtol=1e-4, atol=1e-5)


def test_frozen_parameters_stay_bit_identical(prepared):
    config, prep = prepared
    states = train.initial_states(prep, config)
    before = jax.tree.map(np.asarray, states.params)
    states, _ = _one_epoch(states, prep, config, 1, "vmap")
    # Phase 1: the backbone top is frozen, heads train.
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, states.params["backbone"]),
                                before["backbone"])
    assert not np.array_equal(np.asarray(states.params["head"]["head_logits"]["kernel"]),
                              before["head"]["head_logits"]["kernel"])
    # Phase 2, plain path: the prefix (in the state there) stays bit-identical, top trains.
    plain_cfg = tiny_config(mode="plain")
    plain = train.prepare(plain_cfg)
    st = train.to_phase2(train.initial_states(plain, plain_cfg), plain, plain_cfg)
    before = jax.tree.map(np.asarray, st.params["backbone"])
    st, _ = _one_epoch(st, plain, plain_cfg, 2, "map")
    after = jax.tree.map(np.asarray, st.params["backbone"])
    for layer in before:
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after[layer]),
                                                         jax.tree.leaves(before[layer])))
        assert same == (layer not in plain.trainable), layer


def test_step_compiles_once_per_phase(prepared, monkeypatch):
    config, prep = prepared
    counted = chex.assert_max_traces(train.train_step, n=1)
    monkeypatch.setattr(train, "train_step", counted)
    states = train.initial_states(prep, config)
    fn = jax.jit(lambda s, x, y, b, k: train.epoch_fn(s, x, y, b, k, fold_map="vmap"))
    inputs = prep.inputs1
    for epoch in range(3):   # three epochs, new batches each time: one trace
        batches = train.epoch_batches([tr for tr, _ in prep.folds], batch_size=8,
                                      n_views=inputs.shape[0], seed=0, phase=1, epoch=epoch)
        states, _ = fn(states, inputs, jnp.asarray(prep.examples.labels), batches,
                       jax.random.key(epoch))


def test_svm_stage_equals_sklearn_directly(reference, prepared):
    config, prep = prepared
    states = train.initial_states(prep, config)
    logits, pooled = train.fold_outputs(states, prep, config)
    ours = train.probe.fold_predictions(pooled, prep.examples.labels, prep.folds,
                                        kernel="rbf", C=1.0, class_weight="balanced")
    for k, (tr, te) in enumerate(prep.folds):
        ref = Pipeline([("s", StandardScaler()),
                        ("c", SVC(kernel="rbf", C=1.0, class_weight="balanced"))])
        ref.fit(pooled[k][tr].astype(np.float64), prep.examples.labels[tr])
        np.testing.assert_array_equal(ours[k], ref.predict(pooled[k][te].astype(np.float64)))


def test_cached_path_equals_plain_path(reference, workroot):
    """The shared frozen-layer cache changes speed, not results."""
    plain = train.run(tiny_config(mode="plain"), workroot / "plain")
    cached = reference[1]
    for name in ("cnn", "cnn_mec"):
        for key in train.METRIC_KEYS:
            np.testing.assert_allclose(plain["decisions"][name]["per_fold"][key],
                                       cached["decisions"][name]["per_fold"][key],
                                       atol=1e-6)
    # The SVM sees features that agree to float32 rounding; its decisions may differ only
    # for a point on a margin, which we do not expect on 30 images.
    assert plain["decisions"]["svm"]["confusion"] == cached["decisions"]["svm"]["confusion"]


def _launch(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


def test_launch_misspelt_key_is_one_clear_line(tmp_path):
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  "--config.trian.lr1=0.1", cwd=tmp_path)
    assert out.returncode != 0
    assert "trian" in out.stderr
    assert "Traceback" not in out.stderr


def test_launch_missing_data_folder_is_one_clear_line(tmp_path):
    out = _launch("--config", str(ROOT / "experiments/vgg19_custom.py:smoke"),
                  f"--config.data.root={tmp_path / 'nope'}", cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    err = [l for l in out.stderr.splitlines() if l.startswith("handjax: error:")]
    assert len(err) == 1 and "nope" in err[0]


def test_launch_main_end_to_end(tmp_path):
    """The README's smoke command, through launch.py's main function."""
    import launch
    from absl import flags
    argv = ["launch.py", "--config", str(ROOT / "experiments/mobilenetv2_binary.py:smoke"),
            "--workdir", str(tmp_path / "run")]
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    launch.main(argv[:1])
    results = _results(tmp_path / "run")
    assert results["model"] == "mobilenetv2" and results["loss"] == "binary"
    assert set(results["decisions"]) == set(train.DECISIONS)


SHARD_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import jax
import base
from handjax import train
assert jax.device_count() == 4, jax.devices()
out = {}
for shard in (False, True):
    c = base.cell("vgg16", "categorical", "smoke")
    c.n_folds = 4
    c.train.shard_folds = shard
    r = train.run(c, f"{sys.argv[2]}/shard_{shard}")
    out[str(shard)] = r["decisions"]
print(json.dumps(out))
"""


def test_fold_axis_sharded_over_four_devices_matches_one(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", SHARD_SCRIPT, str(ROOT / "experiments"),
                          str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for name in train.DECISIONS:
        for key in train.METRIC_KEYS:
            np.testing.assert_allclose(res["True"][name]["per_fold"][key],
                                       res["False"][name]["per_fold"][key], atol=1e-6)


def test_offline_imagenet_suggests_random_weights(monkeypatch, tmp_path):
    from handjax import backbones

    def offline(url, dest):
        raise OSError("network is unreachable")
    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(backbones, "_download", offline)
    c = tiny_config()
    c.model.weights = "imagenet"
    with pytest.raises(backbones.WeightsError) as err:
        train.prepare(c)
    msg = str(err.value)
    assert "\n" not in msg
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert "--config.model.weights=none" in msg


def test_bfloat16_cache_is_close_to_float32(prepared):
    """The optional bf16 feature cache halves memory at ~3 significant digits."""
    config, prep = prepared
    c = tiny_config(cache_dtype="bfloat16")
    half = train.prepare(c)
    assert half.inputs2.dtype == jnp.bfloat16
    assert half.cache_bytes * 2 == prep.cache_bytes
    ref = np.asarray(prep.inputs2, np.float32)
    err = np.abs(np.asarray(half.inputs2, np.float32) - ref).max() / np.abs(ref).max()
    assert err < 8e-3                                 # bf16 keeps 8 bits of mantissa


def test_auto_fold_map_follows_the_trained_convs():
    """vmap unless XLA:CPU would batch ``lax.conv`` kernels into grouped convolutions."""
    c = tiny_config()
    with c.unlocked():
        c.model.name = "vgg19"
        c.data.image_size = 112            # block5 sees 7x7 maps: im2col on CPU
    prep = train.prepare(c)
    states = train.initial_states(prep, c)
    on_cpu = jax.default_backend() == "cpu"
    assert train.trains_lax_conv(states, prep) is False
    assert train.resolve_fold_map("auto", False) == "vmap"
    assert train.resolve_fold_map("auto", True) == ("loop" if on_cpu else "vmap")
    assert train.resolve_fold_map("map", False) == "map"
    # forward-only programs of the trained layers: lax.map over folds on CPU under "auto"
    assert train.resolve_eval_fold_map("auto", "vmap") == ("map" if on_cpu else "vmap")
    assert train.resolve_eval_fold_map("auto", "loop") == "loop"
    assert train.resolve_eval_fold_map("vmap", "vmap") == "vmap"   # an explicit choice holds
    c.model.conv_impl = "xla"
    prep = train.prepare(c)
    assert train.trains_lax_conv(train.initial_states(prep, c), prep) is True
