"""Test-wide settings: Keras runs on JAX, caches live in a per-session temp dir."""
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
# Never touch the user's real cache from tests.
if "HANDJAX_CACHE" not in os.environ or not os.environ.get("CI"):
    os.environ["HANDJAX_CACHE"] = tempfile.mkdtemp(prefix="handjax-test-cache-")
