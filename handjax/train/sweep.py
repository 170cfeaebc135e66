"""The study's table: every (loss, model) cell in its own sub-workdir, then ``study.md``,
``study.csv`` and ``study_acc_vs_plus.png``. Finished cells (same config) are skipped on a
rerun; interrupted ones resume. ``sweep_ledger.json`` records each cell's state
(pending / running / done), owner and times.

Many processes (``jax.distributed``): every process runs every cell, one after another,
with the cell's folds sharded over all processes' devices (``handjax.train.distributed``). One
code path for one and many processes; a cell finishes P times sooner instead of P cells at
once, so no host idles on the cheap cells (the 12 cells differ ~10x in cost) while another
trains ResNet50; and every process sees the same finished cells, read from the shared
workdir after a barrier."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from handjax import console
from handjax.train import distributed, run as train
from handjax.train import workdir as workdirs

if TYPE_CHECKING:   # the specs, for annotations only: config is read at one boundary
    from handjax.config import SweepSpec

LEDGER = "sweep_ledger.json"


def run(sweep_spec: SweepSpec, workdir, restart: bool = False) -> dict:
    """Run every cell of the SweepSpec ``sweep_spec``; returns ``{(loss, model): results}``
    (``restart``: every cell from scratch)."""
    from handjax.report import markdown as report
    workdir = Path(workdir)
    cells = {}
    for loss in sweep_spec.losses:
        for model in sweep_spec.models:
            mark(workdir, f"{model}_{loss}", "pending")
    for loss in sweep_spec.losses:
        for model in sweep_spec.models:
            cell = sweep_spec.cells[(loss, model)]
            sub = workdir / f"{model}_{loss}"
            done = sub / "results.json"
            distributed.barrier(f"handjax_sweep_{sub.name}")   # everyone sees the same files
            if (not restart and done.exists() and not (sub / workdirs.INCOMPLETE).exists()
                    and workdirs.same_config(sub, cell.config_json)):
                console.say(f"cell {sub.name} done, skipping")
                cells[(loss, model)] = json.loads(done.read_text())
                mark(workdir, sub.name, "done")
                continue
            console.say(f"cell {sub.name}")
            mark(workdir, sub.name, "running")
            cells[(loss, model)] = train.run(cell, sub, restart=restart)
            mark(workdir, sub.name, "done")
    if distributed.is_primary():   # process 0 writes the study's table
        report.write_study(workdir, cells, list(sweep_spec.models), list(sweep_spec.losses))
        console.say(f"study table: {workdir / 'study.md'}")
    return cells


def mark(workdir: Path, name: str, state: str) -> dict:
    """Record cell ``name``'s ``state`` in ``sweep_ledger.json`` (process 0 writes it):
    ``{"state", "owner", "started", "finished"}``, the owner being who ran it."""
    path = Path(workdir) / LEDGER
    if not distributed.is_primary():
        return {}
    ledger = json.loads(path.read_text()) if path.exists() else {}
    entry = ledger.get(name, {})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if state == "pending":
        if name in ledger:
            return entry
        entry = {"state": "pending", "owner": None, "started": None, "finished": None}
    elif state == "running":
        import jax
        entry = {"state": "running", "started": now, "finished": None,
                 "owner": f"{socket.gethostname()}:{os.getpid()} + "
                          f"{jax.process_count() - 1} more process(es)"}
    elif entry.get("state") != "done":
        entry = dict(entry, state="done", finished=now)
    ledger[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ledger, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return entry
