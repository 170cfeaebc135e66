"""Entry point behind ``launch.py``: one study cell, or the sweep over all of them."""
from __future__ import annotations

import json
from pathlib import Path

from absl import logging

from handjax import backbones, train

# The study's losses as (loss name, ce_weight); "custom" is its pure severity loss.
LOSSES = {"categorical": ("categorical", 1.0), "binary": ("binary", 1.0),
          "custom": ("severity", 0.0), "severity": ("severity", 1.0)}


def main(config, workdir) -> dict:
    """Run ``config`` in ``workdir``: a sweep if it names ``models``, else one cell."""
    if "models" in config:
        return run_study(config, workdir)
    return train.run(config, workdir)


def _names(text: str, allowed, key: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"config.{key}={text!r}: expected a comma list of "
                         f"{', '.join(allowed)}")
    return names


def cell_config(config, model: str, loss: str):
    """``config`` specialised to one study cell (the sweep fields, if any, removed)."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: expected one of {', '.join(LOSSES)}")
    c = config.copy_and_resolve_references()
    with c.unlocked():
        for key in ("models", "losses"):
            if key in c:
                del c[key]
        c.model.name = model
        c.loss.name, c.loss.ce_weight = LOSSES[loss]
        c.loss.label = loss
        c.name = f"{model}_{loss}" + ("_smoke" if config.name.endswith("_smoke") else "")
    return c


def run_study(config, workdir) -> dict:
    """Every (loss, model) cell in its own sub-workdir, then the study table and figure."""
    from handjax import report
    models = _names(config.models, backbones.NAMES, "models")
    losses = _names(config.losses, tuple(LOSSES), "losses")
    workdir = Path(workdir)
    cells = {}
    for loss in losses:
        for model in models:
            sub = workdir / f"{model}_{loss}"
            c = cell_config(config, model, loss)
            done = sub / "results.json"
            if done.exists() and _same_config(sub, c):
                logging.info("cell %s done, skipping", sub.name)
                cells[(loss, model)] = json.loads(done.read_text())
                continue
            logging.info("cell %s", sub.name)
            cells[(loss, model)] = train.run(c, sub)
    report.write_study(workdir, cells, models, losses)
    return cells


def _same_config(sub: Path, config) -> bool:
    path = sub / "config.json"
    return path.exists() and json.loads(path.read_text()) == json.loads(
        train._config_json(config))
