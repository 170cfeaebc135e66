"""What the folds share: the per-image prefix, the bf16 cache, and the offline message."""
import jax.numpy as jnp
import numpy as np
import pytest

from cells import prepare, tiny_config, tiny_spec
from handjax import backbones, features
from handjax import config as configs
from handjax.data.cohort import load_cohort


def test_per_image_prefix_equals_one_batched_pass():
    module, variables = backbones.load("vgg16", None, seed=0)
    views = (np.random.default_rng(0).random((1, 3, 56, 56, 3)) * 255).astype(np.uint8)
    # 56 px: block1_pool's output is 28x28, the last map that large
    assert features.per_image_boundary(module, variables, (56, 56),
                                       "block4_pool") == "block1_pool"
    batched = features.frozen_features(module, variables, "vgg16", views, "block4_pool",
                                       per_image=False)
    per_image = features.frozen_features(module, variables, "vgg16", views, "block4_pool",
                                         per_image=True)
    assert batched.shape == (1, 3, 3, 3, 512)
    np.testing.assert_allclose(per_image, batched, rtol=1e-5,
                               atol=1e-5 * np.abs(batched).max())


def test_even_batch_wastes_the_least_padding():
    assert features.even_batch(300, 32) == 30
    assert features.even_batch(10, 64) == 10
    assert features.even_batch(0, 8) == 8


def test_bfloat16_cache_is_close_to_float32():
    """The optional bf16 feature cache halves memory at ~3 significant digits."""
    _, full = prepare(tiny_spec())
    _, half = prepare(tiny_spec(cache_dtype="bfloat16"))
    assert half.inputs2.dtype == jnp.bfloat16
    assert half.cache_bytes * 2 == full.cache_bytes
    ref = np.asarray(full.inputs2, np.float32)
    err = np.abs(np.asarray(half.inputs2, np.float32) - ref).max() / np.abs(ref).max()
    assert err < 8e-3                                 # bf16 keeps 8 bits of mantissa


def test_offline_imagenet_suggests_random_weights(monkeypatch, tmp_path):
    def offline(url, dest):
        raise OSError("network is unreachable")
    monkeypatch.setenv("HANDJAX_CACHE", str(tmp_path / "empty-cache"))
    from handjax.models import keras_weights
    monkeypatch.setattr(keras_weights, "_download", offline)
    c = tiny_config()
    c.model.weights = "imagenet"
    with pytest.raises(backbones.WeightsError) as err:
        prepare(configs.parse_run(c))
    msg = str(err.value)
    assert "\n" not in msg
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert "--config.model.weights=none" in msg


# --------------------------------------------------------------------------- subjects
def test_metadata_csv_alignment_and_clear_errors(tmp_path):
    from handjax import data
    ids = ["normal/a.png", "normal/b.png", "ra/c.png"]
    good = tmp_path / "meta.csv"
    good.write_text("file,subject,sex\nra/c.png,s2,f\nnormal/a.png,s1,m\nnormal/b.png,s1,m\n")
    subjects, cols = data.load_metadata(good, ids)
    assert subjects.tolist() == ["s1", "s1", "s2"] and cols["sex"].tolist() == ["m", "m", "f"]
    cases = {"twice": "file\nnormal/a.png\nnormal/a.png\nnormal/b.png\nra/c.png\n",
             "not a photo": "file\nnormal/a.png\nnormal/b.png\nra/c.png\nra/zz.png\n",
             "no row for photo": "file\nnormal/a.png\nnormal/b.png\n"}
    for needle, text in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(data.DataError, match=needle) as err:
            data.load_metadata(bad, ids)
        assert "\n" not in str(err.value) and "bad.csv" in str(err.value)


def test_folds_never_split_a_subject(tmp_path):
    """A folder with two photos per subject and a metadata CSV: every subject's photos land
    in one test fold, and in one inner split."""
    from PIL import Image
    rng = np.random.default_rng(0)
    rows = ["file,subject,tone"]
    for c, name in enumerate(("normal", "heberden", "ra")):
        (tmp_path / name).mkdir()
        for s in range(6):
            for hand in ("left", "right"):
                img = rng.integers(0, 255, (32, 32, 3), np.uint8)
                Image.fromarray(img).save(tmp_path / name / f"{s}_{hand}.png")
                rows.append(f"{name}/{s}_{hand}.png,{name}{s},t{s % 2}")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    c = tiny_config()
    c.data.root, c.data.metadata = str(tmp_path), str(tmp_path / "meta.csv")
    spec = configs.parse_run(c)
    pd = load_cohort(spec.data, spec.seed, spec.n_folds, inner_val=0.25)
    assert len(np.unique(pd.subjects)) == 18 and set(pd.metadata) == {"tone"}
    fold_of = {}
    for k, (tr, te) in enumerate(pd.folds):
        for i in te:
            fold_of.setdefault(pd.subjects[i], set()).add(k)
        inner_subjects = set(pd.subjects[pd.inner[k]])
        assert not inner_subjects & set(pd.subjects[np.setdiff1d(tr, pd.inner[k])])
    assert all(len(v) == 1 for v in fold_of.values())


def test_spilled_cache_gives_identical_results(tmp_path):
    """A budget of ~0 bytes puts the frozen-feature cache in a .npy memmap in the workdir,
    streamed to phase 2 one step at a time: the confusion matrices equal the in-memory
    run's (pinned in the golden file, which test_train checks)."""
    import json
    from pathlib import Path

    from handjax import config, train
    c = config.cell("vgg16", "categorical", "smoke")
    c.train.cache_budget_gb = 1e-9
    results = train.run(config.parse_run(c), tmp_path)
    assert (tmp_path / "frozen_features.0.npy").stat().st_size > results["cache_bytes"]
    golden = json.loads((Path(__file__).parent / "golden" / "smoke_confusions.json")
                        .read_text())["vgg16_categorical"]
    assert {k: results["decisions"][k]["confusion"] for k in golden} == golden
