"""The entry point behind ``launch.py``: the config is parsed into specs here, at one
boundary, then one call runs a single cell (``train.run``) or the sweep (``sweep.run``)."""
from __future__ import annotations

from handjax import config as configs


def main(config, workdir, restart: bool = False) -> dict:
    """Run ``config`` (a ConfigDict) in ``workdir``: the study's sweep or one cell
    (``restart``: discard what a previous run left there)."""
    parsed = configs.parse(config)
    if isinstance(parsed, configs.SweepSpec):
        from handjax import sweep
        return sweep.run(parsed, workdir, restart=restart)
    from handjax import train
    return train.run(parsed, workdir, restart=restart)
