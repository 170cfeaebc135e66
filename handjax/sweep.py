"""The study's table: every (loss, model) cell in its own sub-workdir, then ``study.md``,
``study.csv`` and ``study_acc_vs_plus.png``. Finished cells (same config) are skipped on a
rerun; interrupted ones resume."""
from __future__ import annotations

import json
from pathlib import Path

from handjax import console, train, workdir as workdirs


def run(spec, workdir, restart: bool = False) -> dict:
    """Run every cell of the SweepSpec ``spec``; returns ``{(loss, model): results}``
    (``restart``: every cell from scratch)."""
    from handjax import report
    workdir = Path(workdir)
    cells = {}
    for loss in spec.losses:
        for model in spec.models:
            cell = spec.cells[(loss, model)]
            sub = workdir / f"{model}_{loss}"
            done = sub / "results.json"
            if not restart and done.exists() and workdirs.same_config(sub, cell.config_json):
                console.say(f"cell {sub.name} done, skipping")
                cells[(loss, model)] = json.loads(done.read_text())
                continue
            console.say(f"cell {sub.name}")
            cells[(loss, model)] = train.run(cell, sub, restart=restart)
    report.write_study(workdir, cells, list(spec.models), list(spec.losses))
    console.say(f"study table: {workdir / 'study.md'}")
    return cells
