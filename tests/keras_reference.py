"""Keras Applications references for the models tests (not a test module).

Keras models get random weights and are saved as legacy HDF5 files the way Keras writes
them; both frameworks load those files. One reference per model per test session (built
on first use), shared by tests/test_models_backbones.py and test_models_keras_weights.py.
"""

import h5py
import jax
import numpy as np

import keras  # conftest sets KERAS_BACKEND=jax
from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

TOL = 1e-4
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


def _randomize(model, rng):
    """Every Keras weight random; kernels He-scaled so activations stay O(1); BN variance > 0."""
    for layer in model.layers:
        for v in layer.weights:
            shape, leaf = tuple(v.shape), v.path.split("/")[-1]
            if len(shape) == 4:
                fan_in = np.prod(shape[:2]) * (1 if "depthwise" in layer.name else shape[2])
                value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            elif leaf == "gamma" and layer.name.endswith(("_3_bn", "_project_BN")):
                # Small last gamma of residual branches keeps the residual stream O(1).
                value = rng.uniform(0.1, 0.4, shape)
            elif leaf == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            elif leaf == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)
            else:  # bias, beta, moving_mean
                value = rng.normal(0, 0.2, shape)
            v.assign(value.astype(np.float32))


class KerasRef:
    """A Keras model loaded from a random-weight legacy HDF5 file, plus test images."""

    def __init__(self, name, tmp_dir):
        factory, self.keras_preprocess = KERAS_APPS[name]
        h, w = INPUT_HW[name]
        self.model = factory(weights=None, include_top=False, input_shape=(h, w, 3))
        rng = np.random.default_rng(0)
        _randomize(self.model, rng)
        self.path = str(tmp_dir / f"{name}.h5")
        with h5py.File(self.path, "w") as f:
            save_weights_to_hdf5_group(f, self.model)
        _randomize(self.model, rng)  # different values, so load_weights must do the work
        self.model.load_weights(self.path)
        self.images = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        self.features = self.predict(train=False)

    def inputs(self):
        return self.keras_preprocess(self.images.astype(np.float32))

    def predict(self, train):
        """Feature map; with train=True also Keras's updated {layer: (moving_mean, moving_var)}."""
        if not train:
            return self.model.predict(self.inputs(), verbose=0)
        # Keras's own functional training call, jitted (eager Keras is slow on CPU).
        m = self.model
        trainable = [v.value for v in m.trainable_variables]
        frozen = [v.value for v in m.non_trainable_variables]
        call = jax.jit(lambda t, f, x: m.stateless_call(t, f, x, training=True))
        out, frozen = call(trainable, frozen, self.inputs())
        new = {v.path: np.asarray(a) for v, a in zip(m.non_trainable_variables, frozen)}
        stats = {
            layer.name: (new[layer.moving_mean.path], new[layer.moving_variance.path])
            for layer in m.layers
            if hasattr(layer, "moving_mean")
        }
        return np.asarray(out), stats


def keras_ref(name, tmp_path_factory) -> KerasRef:
    """The session's reference for ``name``, built on first use."""
    if name not in _REFS:
        _REFS[name] = KerasRef(name, tmp_path_factory.mktemp(f"keras_ref_{name}"))
    return _REFS[name]
