"""The conv tuner's measured choices: one small JSON file per machine under
``cache_dir()/tuning``, read by :func:`handjax.models.kernels.convs.conv_algorithm` (``"auto"``)
and written by :mod:`handjax.models.kernels.tuning`, which measures them.

A file's name hashes :func:`machine` (CPU model and its vector/matrix flags, or the
accelerator kind; the JAX and jaxlib versions), so another machine or another JAX reads
another file, and so re-tunes. Inside, ``"layers"`` maps :func:`layer_key` (purpose,
compute dtype, the conv's shape) to the algorithm kept and the seconds measured for each
candidate; ``"dtypes"`` maps :func:`model_key` to ``model.dtype="auto"``'s measured
decision; ``"complete"`` marks the (model part, batch, dtypes) whose every conv is measured,
so that later runs need not even trace the model. An unreadable file is one console line, and is tuned again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

from handjax.cache import cache_dir

SCHEMA = 1
# CPU flags that change which conv algorithm and dtype win (vector width, bf16/fp16 units).
_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c")

_MEMO: dict[Path, tuple[int | None, dict]] = {}   # path -> (its mtime when read, contents)


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, tuple[str, ...]]:
    """(CPU model name, its flags relevant to conv speed), from the kernel's report (Linux;
    elsewhere ("", ()))."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return "", ()
    model, flags = "", ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = tuple(sorted(f for f in value.split() if f.startswith(_FLAG_PREFIXES)))
    return model, flags


@functools.lru_cache(maxsize=None)
def _machine() -> str:
    import jax
    import jaxlib
    backend = jax.default_backend()
    out = {"backend": backend, "jax": jax.__version__, "jaxlib": jaxlib.__version__}
    if backend == "cpu":
        out["cpu"], out["flags"] = cpu_info()
    else:
        out["device"] = jax.devices()[0].device_kind
    return json.dumps(out, sort_keys=True)


def machine() -> dict:
    """What a measured choice holds for: the backend, the CPU model and flags or the
    accelerator kind, and the JAX / jaxlib versions (read once per process)."""
    return json.loads(_machine())


def cache_path(machine_key: dict | None = None) -> Path:
    """``cache_dir()/tuning/convs-<hash of machine()>.json``."""
    machine_key = machine() if machine_key is None else machine_key
    digest = hashlib.sha256(json.dumps(machine_key, sort_keys=True).encode()).hexdigest()
    return cache_dir() / "tuning" / f"convs-{digest[:16]}.json"


def layer_key(purpose: str, dtype: str, in_shape, features: int, kernel_size, strides: int,
              depthwise: bool) -> str:
    """``"train/float32/7x7x512->512/k3x3/s1"`` (``/dw`` for depthwise): one conv's key."""
    h, w, cin = in_shape
    kh, kw = kernel_size
    return (f"{purpose}/{dtype}/{h}x{w}x{cin}->{features}/k{kh}x{kw}/s{strides}"
            + ("/dw" if depthwise else ""))


def model_key(name: str, split: str, image_size: int) -> str:
    """``"vgg19/block4_pool/112px"``: the model part whose dtype ``auto`` decides."""
    return f"{name}/{split}/{image_size}px"


def empty(machine_key: dict) -> dict:
    return {"schema": SCHEMA, "machine": machine_key, "layers": {}, "dtypes": {}}


def _valid(data) -> bool:
    return (isinstance(data, dict) and data.get("schema") == SCHEMA
            and isinstance(data.get("layers"), dict) and isinstance(data.get("dtypes"), dict))


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def read(path: Path | None = None, say=None) -> dict:
    """The file's contents (kept in memory until the file changes); missing: empty;
    unreadable or of another schema: empty, and one line through ``say`` (default: the
    console) saying it is tuned again."""
    path = cache_path() if path is None else path
    mtime = _mtime(path)
    if path in _MEMO and _MEMO[path][0] == mtime:
        return _MEMO[path][1]
    data = None
    if mtime is not None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = None
        if not _valid(data):
            if say is None:
                from handjax.console import say
            say(f"conv tuning cache {path} is unreadable; tuning again")
            data = None
    _MEMO[path] = (mtime, data if data is not None else empty(machine()))
    return _MEMO[path][1]


def write(data: dict, path: Path | None = None) -> Path:
    """Write ``data`` atomically (a temp file renamed over the old one) and memoise it."""
    path = cache_path() if path is None else path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".convs-", suffix=".json")
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the cache from the machine's other users
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    _MEMO[path] = (_mtime(path), data)
    return path


def layer_choice(key: str) -> str | None:
    """The algorithm measured fastest for ``key`` on this machine, or None (not tuned)."""
    entry = read()["layers"].get(key)
    return entry.get("algorithm") if isinstance(entry, dict) else None


def dtype_choice(key: str) -> str | None:
    """``model.dtype="auto"``'s measured decision for :func:`model_key` ``key``, or None."""
    entry = read()["dtypes"].get(key)
    return entry.get("dtype") if isinstance(entry, dict) else None
