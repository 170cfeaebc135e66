"""The one place handjax keeps downloaded weights and prepared data sets."""
import os
from pathlib import Path

from handjax.errors import SetupError


def cache_dir() -> Path:
    """``$HANDJAX_CACHE`` if set and non-empty, else ``~/.cache/handjax``; read at call time."""
    return Path(os.environ.get("HANDJAX_CACHE") or "~/.cache/handjax").expanduser()


def check_cache_dir() -> Path:
    """:func:`cache_dir`, made if missing; one line (a SetupError) when it is a file, lies
    under a file, or cannot be written: checked before a run starts, not when the first
    weight file or data set is written into it."""
    path = cache_dir()
    if path.exists() and not path.is_dir():
        raise SetupError(f"the cache folder {path} ($HANDJAX_CACHE) is a file, not a folder; "
                         "point HANDJAX_CACHE at a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SetupError(f"the cache folder {path} ($HANDJAX_CACHE) cannot be written "
                         f"({e.strerror}); point HANDJAX_CACHE at a folder you can write "
                         "to") from e
    return path
