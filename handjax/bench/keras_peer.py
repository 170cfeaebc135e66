"""The Keras 3 reference of ``python -m handjax.bench protocol --keras``: the study's
protocol written plainly in Keras (the frozen base recomputed at every step, the folds one
after another, each compiled anew), on exactly the arrays and folds handjax uses.
"""
from __future__ import annotations

import os
import resource
import time

import jax
import numpy as np

from handjax.models import backbones


# handjax backbone -> (keras.applications constructor, module holding its preprocess_input)
KERAS_APPS = {"vgg16": ("VGG16", "vgg16"), "vgg19": ("VGG19", "vgg19"),
              "resnet50": ("ResNet50", "resnet50"),
              "mobilenetv2": ("MobileNetV2", "mobilenet_v2")}


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


NO_KERAS = "bench protocol --keras: keras is not installed; pip install -e '.[test]'"


def import_keras():
    """Keras 3 on the JAX backend, or a one-line exit when it is not installed."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        raise SystemExit(NO_KERAS) from None
    return keras


def keras_data(fast):
    """Labels [N], folds and views [V, N, H, W, 3] uint8: exactly the arrays handjax uses."""
    from handjax.data.cohort import load_cohort
    cohort = load_cohort(fast.data, fast.seed, fast.n_folds, fast.train.inner_val)
    folds = list(zip(cohort.train_sets, cohort.test_sets))
    return cohort.labels, len(cohort.examples.class_names), folds, cohort.views


def keras_model(keras, fast, n_classes: int):
    """A fresh ``keras.applications`` base + the study's head: global average pooling ->
    Dense(hidden, relu) -> Dropout -> Dense(classes, softmax). Returns (base, model)."""
    size = fast.data.image_size
    weights = fast.model.weights
    base = getattr(keras.applications, KERAS_APPS[fast.model.name][0])(
        include_top=False, weights=weights, input_shape=(size, size, 3))
    x = keras.layers.GlobalAveragePooling2D(name="pooled")(base.output)
    x = keras.layers.Dense(fast.model.hidden, activation="relu")(x)
    x = keras.layers.Dropout(fast.model.dropout)(x)
    out = keras.layers.Dense(n_classes, activation="softmax")(x)
    return base, keras.Model(base.input, out)


def keras_fit(keras, model, x_views, y, train_idx, *, lr: float, epochs: int,
              batch_size: int, rng, val) -> None:
    """Compile with Adam(lr) and fit ``epochs`` epochs, each training example in one random
    view per epoch (as handjax draws them), validating on ``val`` after every epoch."""
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    for _ in range(epochs):
        view = rng.integers(0, len(x_views), size=len(train_idx))
        model.fit(x_views[view, train_idx], y[train_idx], batch_size=batch_size, epochs=1,
                  validation_data=val, verbose=0)


def keras_evaluate(keras, model, x, labels, train_idx, test_idx, svm) -> tuple[float, float]:
    """CNN test accuracy, and that of an SVM (standardised like ``handjax.evaluation.scoring``) fitted on
    the training images' pooled features and scored on the test images'."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    probs = model.predict(x[test_idx], verbose=0)
    cnn = float(np.mean(probs.argmax(-1) == labels[test_idx]))
    pooled = keras.Model(model.input, model.get_layer("pooled").output).predict(x, verbose=0)
    clf = make_pipeline(StandardScaler(), SVC(kernel=svm.kernel, C=svm.C, random_state=0,
                                              class_weight=svm.class_weight or None))
    clf.fit(pooled[train_idx].astype(np.float64), labels[train_idx])
    return cnn, float(clf.score(pooled[test_idx].astype(np.float64), labels[test_idx]))


def keras_fold(keras, fast, x_views, labels, n_classes: int, k: int, fold,
               timing: dict) -> tuple[float, float]:
    """Fold ``k`` as the study's code ran it: a fresh model, phase 1 with the base frozen,
    phase 2 with the layers after the split unfrozen, then evaluation (CNN, SVM accuracy).
    Adds its train and evaluate seconds to ``timing``."""
    t = time.perf_counter()
    (train_idx, test_idx), tr, name = fold, fast.train, fast.model.name
    keras.backend.clear_session()
    keras.utils.set_random_seed(fast.seed + k)
    y = np.eye(n_classes, dtype=np.float32)[labels]
    fit = dict(batch_size=tr.batch_size, rng=np.random.default_rng([fast.seed, k]),
               val=(x_views[0, test_idx], y[test_idx]))
    base, model = keras_model(keras, fast, n_classes)
    base.trainable = False
    keras_fit(keras, model, x_views, y, train_idx, lr=tr.lr1, epochs=tr.epochs1, **fit)
    base.trainable = True
    names = [layer.name for layer in base.layers]
    split = fast.model.split or backbones.DEFAULT_TRAINABLE_FROM[name]
    for layer in base.layers[: names.index(split) + 1]:
        layer.trainable = False
    keras_fit(keras, model, x_views, y, train_idx, lr=tr.lr2, epochs=tr.epochs2, **fit)
    timing["run_s"] += time.perf_counter() - t
    t = time.perf_counter()
    accs = keras_evaluate(keras, model, x_views[0], labels, train_idx, test_idx, fast.svm)
    timing["evaluate_s"] += time.perf_counter() - t
    return accs


def keras_protocol(fast) -> dict:
    """The study's protocol on ``fast``'s data and folds, written plainly in Keras 3: the
    frozen base recomputed at every step, the folds one after another, each compiled anew.

    JAX's persistent compilation cache (which handjax's runs switch on) takes no new entries
    meanwhile: plain Keras has none, so one fold's compilations must not serve the next.
    """
    from tqdm import tqdm
    keras = import_keras()
    min_secs = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        t0 = time.perf_counter()
        labels, n_classes, folds, views = keras_data(fast)
        preprocess = getattr(keras.applications, KERAS_APPS[fast.model.name][1]).preprocess_input
        x_views = preprocess(views.astype(np.float32))
        timing = {"prepare_s": time.perf_counter() - t0, "run_s": 0.0, "evaluate_s": 0.0}
        accs = []
        for k, fold in enumerate(tqdm(folds, desc="keras folds", leave=False)):
            accs.append(keras_fold(keras, fast, x_views, labels, n_classes, k, fold, timing))
        wall = time.perf_counter() - t0
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)
    cnn, svm = (list(a) for a in zip(*accs))
    return {"wall_s": wall, "timing": timing, "keras": keras.__version__,
            "cnn_acc": float(np.mean(cnn)), "svm_acc": float(np.mean(svm)),
            "cnn_acc_per_fold": cnn, "svm_acc_per_fold": svm, "peak_rss_gib": peak_rss_gib()}
