"""The conv plan: which algorithm each conv of a run runs, as data decided once per run.

:class:`ConvPlan` maps each conv's :func:`layer_key` (purpose, compute dtype, shape) to an
algorithm and holds the run's compute dtype. A run resolves it once at its boundary, before
anything is traced (:func:`handjax.models.kernels.tuning.resolve_plan`), writes it into the
workdir (:data:`PLAN_FILE`, beside config.json; its hash is in ledger.json) and passes it into
the model (``Backbone.conv_plan`` -> ``Conv.plan``). A resumed run, ``predict``, ``validate``
and ``serve`` read the workdir's plan, never the measurement cache: the cache holds what was
measured on a machine, the plan what a run ran.

The measurement cache: one small JSON file per machine under ``cache_dir()/tuning``, written
by :mod:`handjax.models.kernels.tuning` and read by it alone (never while tracing). A file's
name hashes :func:`machine` (CPU model and its vector/matrix flags, or the accelerator kind;
the JAX and jaxlib versions), so another machine or another JAX reads another file, and so
re-tunes. Inside, ``"layers"`` maps :func:`layer_key` to the algorithm decided and how
(``"measured"`` against the table, or ``"budget"``: the tuning bound ran out first, the
table's choice kept); ``"dtypes"`` maps :func:`model_key` to ``model.dtype="auto"``'s
decision. An unreadable file is one console line, and is tuned again.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

from handjax.cache import cache_dir
from handjax.errors import RunError

# The conv algorithms (:mod:`handjax.models.kernels.convs` runs them), named here, where no
# JAX is imported: the config checks ``model.conv_impl`` against them.
ALGORITHMS = ("xla", "im2col", "mmgrad", "winograd", "winograd4", "matmul")
CONV_IMPLS = ("auto", "table") + ALGORITHMS   # model.conv_impl: a policy, or one algorithm

SCHEMA = 2   # 2: choices by the margin rule (tuning.decide), "how" per layer
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


def machine_digest(machine_key: dict | None = None) -> str:
    """16 hex digits of :func:`machine` (or ``machine_key``)."""
    machine_key = machine() if machine_key is None else machine_key
    return hashlib.sha256(json.dumps(machine_key, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(machine_key: dict | None = None) -> Path:
    """``cache_dir()/tuning/convs-<hash of machine()>.json``."""
    return cache_dir() / "tuning" / f"convs-{machine_digest(machine_key)}.json"


def compilation_cache_dir() -> Path:
    """``cache_dir()/jax/<hash of machine()>``: JAX's persistent compilation cache, one per
    machine (CPU model and flags, JAX versions), since a program compiled for one CPU's
    instructions must not be loaded on another that shares the cache folder."""
    return cache_dir() / "jax" / machine_digest()


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
            say(f"conv tuning cache {path} is unreadable or from another handjax; "
                "tuning again")
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


def cached_layer(key: str, path: Path | None = None) -> str | None:
    """The algorithm the cache holds for layer ``key`` on this machine, or None."""
    entry = read(path)["layers"].get(key)
    return entry.get("algorithm") if isinstance(entry, dict) else None


def cached_dtype(key: str, path: Path | None = None) -> str | None:
    """``model.dtype="auto"``'s cached decision for :func:`model_key` ``key``, or None."""
    entry = read(path)["dtypes"].get(key)
    return entry.get("dtype") if isinstance(entry, dict) else None


# ----------------------------------------------------------------------------- the plan
PLAN_FILE = "conv_plan.json"
PLAN_SCHEMA = 1   # conv_plan.json's format
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """Which algorithm each conv runs, and the compute dtype: plain, hashable data (a Flax
    module field), written as JSON.

    ``layers``: sorted ``(layer key, algorithm)`` pairs (:func:`layer_key`); a conv whose key
    is absent runs the table's choice (:func:`handjax.models.kernels.convs.conv_policy`).
    ``dtype``: the compute dtype name the run uses. ``policy``: the ``model.conv_impl`` it
    was resolved for. ``machine``: canonical JSON of :func:`machine` where its choices were
    measured ("" when nothing was measured: the table's choices hold everywhere)."""

    layers: tuple[tuple[str, str], ...] = ()
    dtype: str = "float32"
    policy: str = "table"
    machine: str = ""

    @functools.cached_property
    def _table(self) -> dict[str, str]:
        return dict(self.layers)

    def algorithm(self, key: str) -> str | None:
        """The algorithm for layer ``key``, or None (not in the plan: the table's)."""
        return self._table.get(key)

    def measured_elsewhere(self) -> bool:
        """Whether the plan's measured choices come from another machine than this one."""
        return bool(self.machine) and json.loads(self.machine) != machine()

    def to_json(self) -> dict:
        return {"schema": PLAN_SCHEMA, "policy": self.policy, "dtype": self.dtype,
                "machine": json.loads(self.machine) if self.machine else None,
                "layers": dict(self.layers)}

    @classmethod
    def from_json(cls, data, where: str = PLAN_FILE) -> "ConvPlan":
        """The plan of :meth:`to_json`'s dict; anything else is one RunError naming ``where``."""
        ok = (isinstance(data, dict) and data.get("schema") == PLAN_SCHEMA
              and data.get("dtype") in DTYPES and isinstance(data.get("layers"), dict)
              and all(isinstance(k, str) and isinstance(v, str)
                      for k, v in data["layers"].items())
              and isinstance(data.get("machine"), (dict, type(None))))
        if not ok:
            raise RunError(f"{where} is not a conv plan of this handjax (schema {PLAN_SCHEMA}); "
                           "rerun with --config.model.replan=True to decide a new one")
        return cls(tuple(sorted(data["layers"].items())), data["dtype"],
                   str(data.get("policy", "auto")),
                   canonical(data["machine"]) if data["machine"] else "")

    def to_text(self) -> str:
        """:meth:`to_json` as the text of ``conv_plan.json`` (:data:`PLAN_FILE`), which a
        run's workdir records (:func:`handjax.train.workdir.check_ledger`)."""
        return json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n"

    def fingerprint(self) -> str:
        """SHA-256 of the plan's JSON (what ledger.json pins)."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


def canonical(machine_key: dict) -> str:
    """``machine_key`` as the one JSON string a plan stores."""
    return json.dumps(machine_key, sort_keys=True)


def elsewhere_line(plan: ConvPlan, workdir) -> str:
    """The one line said when a workdir's plan was measured on another machine."""
    where = json.loads(plan.machine)
    what = where.get("cpu") or where.get("device") or where.get("backend", "?")
    return (f"conv plan: {Path(workdir) / PLAN_FILE} was measured on another machine ({what}, "
            f"jax {where.get('jax', '?')}); using it, so the results stay this run's "
            "(--config.model.replan=True decides a plan for this machine)")


def load_plan(workdir) -> ConvPlan | None:
    """The plan recorded in ``workdir`` (None when there is none); damaged: one RunError."""
    path = Path(workdir) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{path} cannot be read ({e}); rerun with --config.model.replan=True "
                       "to decide a new plan") from e
    return ConvPlan.from_json(data, str(path))
