"""How long a run's stages took: ``timing.json``, one small object instead of a dict threaded
through the calls."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; elsewhere None)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


# timing.json's imports_s: the process's age once the training stage is imported. For
# ``launch.py`` that is Python's start, every import and the flags; in a longer-lived
# process (bench, tests) it includes whatever ran before.
IMPORT_S = process_age()


class Timings:
    """Seconds (and FLOP counts) of one run's stages, by name: ``tune_s``, ``prepare_s``,
    ``compile_phase1_s``, ``epochs2_s``, ``flops_phase2``, ... (``timing.json``)."""

    def __init__(self, imports_s: float | None = IMPORT_S):
        self._values: dict[str, float] = {} if imports_s is None else {"imports_s": imports_s}

    def set(self, key: str, value: float) -> None:
        self._values[key] = float(value)

    def add(self, key: str, seconds: float) -> None:
        """Accumulate ``seconds`` under ``key`` (one entry over many epochs)."""
        self._values[key] = self._values.get(key, 0.0) + float(seconds)

    def get(self, key: str, default: float = 0.0) -> float:
        return self._values.get(key, default)

    @contextlib.contextmanager
    def timed(self, key: str):
        """Add the wall time of the ``with`` block to ``key``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(key, time.perf_counter() - t)

    def as_dict(self) -> dict[str, float]:
        """What ``timing.json`` holds (rounded to the millisecond)."""
        return {k: round(v, 3) for k, v in self._values.items()}
