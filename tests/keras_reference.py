"""Keras Applications references for the models tests (not a test module).

A Keras application gets random weights, is saved as a legacy HDF5 file the way Keras
writes it, is re-randomised and loads that file back: Keras itself is the reference that
both frameworks read the same file into. The study's four models: one :class:`KerasRef`
per model per test session (built on first use), shared by tests/test_models_backbones.py
and test_models_keras_weights.py; the newer backbones (tests/test_models_convnext.py,
test_models_efficientnetv2.py) use :func:`reference` with their own weight values.
"""

import h5py
import jax
import jax.numpy as jnp
import numpy as np

import keras  # conftest sets KERAS_BACKEND=jax
from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

TOL = 1e-4  # max|ours - keras| / max(1, max|keras|) (study models), / max|keras| (newer)
# Input (height, width) per model: non-square and odd sizes exercise Keras's padding rules.
INPUT_HW = {"vgg16": (64, 64), "vgg19": (48, 80), "resnet50": (75, 97), "mobilenetv2": (72, 96)}
KERAS_APPS = {
    "vgg16": (keras.applications.VGG16, keras.applications.vgg16.preprocess_input),
    "vgg19": (keras.applications.VGG19, keras.applications.vgg19.preprocess_input),
    "resnet50": (keras.applications.ResNet50, keras.applications.resnet50.preprocess_input),
    "mobilenetv2": (keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input),
}
PARAM_COUNTS = {"vgg16": 14_714_688, "vgg19": 20_024_384, "resnet50": 23_587_712, "mobilenetv2": 2_257_984}
_REFS = {}


def randomize(model, rng, value_fn):
    """Assigns ``value_fn(layer, leaf name, shape, rng)`` to every Keras weight."""
    for layer in model.layers:
        for v in layer.weights:
            value = value_fn(layer, v.path.split("/")[-1], tuple(v.shape), rng)
            v.assign(np.asarray(value, np.float32))


def he_normal(shape, fan_in, rng):
    return rng.normal(0, np.sqrt(2.0 / fan_in), shape)


def save_and_reload(model, path, rng, value_fn):
    """Random weights -> legacy HDF5 file at ``path``; other random values; then Keras's
    own ``load_weights`` of that file, so the reference really read the file."""
    randomize(model, rng, value_fn)
    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, model)
    randomize(model, rng, value_fn)
    model.load_weights(path)


def keras_weighted_layers(model):
    return [layer.name for layer in model.layers if layer.weights]


def relative_error(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def keras_train_call(model, inputs):
    """Keras's functional training call, jitted (eager Keras is slow on CPU): the output
    and ``{variable path: new value}`` of the non-trainable variables."""
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    call = jax.jit(lambda t, f, x: model.stateless_call(t, f, x, training=True))
    out, frozen = call(trainable, frozen, inputs)
    return np.asarray(out), {v.path: np.asarray(a) for v, a in zip(model.non_trainable_variables, frozen)}


def reference(factory, hw, path, value_fn):
    """``(model, path, images, features)``: ``factory(include_top=False)`` at input size ``hw``
    with random weights saved to and reloaded from ``path``, two random [0, 255] images and
    Keras's feature maps of them (for models whose preprocessing is inside the model)."""
    model = factory(weights=None, include_top=False, input_shape=(*hw, 3))
    rng = np.random.default_rng(0)
    save_and_reload(model, str(path), rng, value_fn)
    images = rng.integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    return model, str(path), images, model.predict(images.astype(np.float32), verbose=0)


def assert_tree_like_flax_init(module, variables):
    """The variables have exactly the tree and shapes Flax's own ``init`` gives."""
    flax_shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(lambda s: s.shape, flax_shapes)


def split_composes(module, variables, x, boundary):
    """``apply(stop=boundary)`` then ``apply(start=boundary)`` equals the full forward;
    returns (boundary output, final output)."""
    full = jax.jit(module.apply)(variables, x)
    mid = jax.jit(lambda v, x: module.apply(v, x, stop=boundary))(variables, x)
    top = jax.jit(lambda v, x: module.apply(v, x, start=boundary))(variables, mid)
    np.testing.assert_allclose(top, full, rtol=1e-5, atol=1e-5 * float(jnp.abs(full).max()))
    return mid, top


def _study_value(layer, leaf, shape, rng):
    """The four study models: kernels He-scaled so activations stay O(1); BN variance > 0."""
    if len(shape) == 4:
        return he_normal(shape, np.prod(shape[:2]) * (1 if "depthwise" in layer.name else shape[2]), rng)
    if leaf == "gamma" and layer.name.endswith(("_3_bn", "_project_BN")):
        # Small last gamma of residual branches keeps the residual stream O(1).
        return rng.uniform(0.1, 0.4, shape)
    if leaf == "gamma":
        return rng.uniform(0.5, 1.5, shape)
    if leaf == "moving_variance":
        return rng.uniform(0.5, 2.0, shape)
    return rng.normal(0, 0.2, shape)  # bias, beta, moving_mean


class KerasRef:
    """A Keras model loaded from a random-weight legacy HDF5 file, plus test images."""

    def __init__(self, name, tmp_dir):
        factory, self.keras_preprocess = KERAS_APPS[name]
        h, w = INPUT_HW[name]
        self.model = factory(weights=None, include_top=False, input_shape=(h, w, 3))
        rng = np.random.default_rng(0)
        self.path = str(tmp_dir / f"{name}.h5")
        save_and_reload(self.model, self.path, rng, _study_value)
        self.images = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        self.features = self.predict(train=False)

    def inputs(self):
        return self.keras_preprocess(self.images.astype(np.float32))

    def predict(self, train):
        """Feature map; with train=True also Keras's updated {layer: (moving_mean, moving_var)}."""
        if not train:
            return self.model.predict(self.inputs(), verbose=0)
        out, new = keras_train_call(self.model, self.inputs())
        stats = {
            layer.name: (new[layer.moving_mean.path], new[layer.moving_variance.path])
            for layer in self.model.layers
            if hasattr(layer, "moving_mean")
        }
        return out, stats


def keras_ref(name, tmp_path_factory) -> KerasRef:
    """The session's reference for ``name``, built on first use."""
    if name not in _REFS:
        _REFS[name] = KerasRef(name, tmp_path_factory.mktemp(f"keras_ref_{name}"))
    return _REFS[name]
