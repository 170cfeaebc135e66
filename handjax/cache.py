"""The one cache directory handjax writes outside a run's workdir (weights, datasets)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$HANDJAX_CACHE`` if set and non-empty, else ``~/.cache/handjax``; read at call time."""
    return Path(os.environ.get("HANDJAX_CACHE") or "~/.cache/handjax").expanduser()
