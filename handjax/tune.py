"""Decide this machine's conv plan for a config, before (or instead of) a run's first step.

    python -m handjax.tune --config experiments/vgg19_custom.py
    python -m handjax.tune --config experiments/vgg19_custom.py:smoke --config.model.conv_impl=auto
    python -m handjax.tune --config experiments/vgg19_custom.py --again --budget 120

A run with ``model.conv_impl="auto"`` (the default) on CPU decides its plan itself the first
time (one bounded tuning step) and records it in its workdir; this command does the same step
ahead of time, so that the first run measures nothing. It prints the plan: per conv, the
algorithm and whether it was measured against the table or kept as the table's. ``--again``
measures anew the convs a previous bound left to the table (``--budget``: the new bound, in
seconds). Runs already started keep the plan recorded in their workdir
(docs/reproducibility.md). A study config (``models=...``) decides every cell's model.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/vgg19_custom.py[:smoke].",
    lock_config=True)
_AGAIN = flags.DEFINE_bool("again", False, "Measure anew the convs an earlier bound left to "
                           "the table.")
_BUDGET = flags.DEFINE_float("budget", None, "The bound in seconds (default: the tuner's, "
                             "handjax.models.kernels.tuning.TUNE_BUDGET_S).")


def plan_table(plan, layers_how: dict) -> str:
    """The plan as lines: ``key  algorithm  (how)``."""
    if not plan.layers:
        return (f"  (conv_impl={plan.policy!r} measures nothing here: the table's choices, or the "
                "one algorithm named; --config.model.conv_impl=auto measures on CPU)")
    width = max(len(k) for k, _ in plan.layers)
    return "\n".join(f"  {k:{width}s}  {a:9s} ({layers_how.get(k, '?')})"
                     for k, a in plan.layers)


def tune_specs(specs, again: bool, budget: float | None) -> list:
    """Resolve the conv plan of each distinct (model, image size, batch) among ``specs``
    (RunSpecs); returns ``[(spec, plan, seconds)]``."""
    from handjax.models.kernels import tuning
    seen, out = set(), []
    for spec in specs:
        what = (spec.model, spec.data.image_size, spec.train.batch_size)
        if what in seen:
            continue
        seen.add(what)
        kw = {} if budget is None else {"budget_s": budget}
        plan, seconds = tuning.resolve_plan(spec.model, spec.data.image_size,
                                            spec.train.batch_size, again=again, **kw)
        out.append((spec, plan, seconds))
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from handjax import cli, console
    console.quiet(verbose=flags.FLAGS["verbosity"].present)   # as launch.py: our lines only
    cli.loaded_config(_CONFIG)
    # one handler, as every command: a user error is one line (exit 1), Ctrl-C exits 130
    sys.exit(cli.command(_tune, cli.INTERRUPTED_TUNING)())


def _tune() -> None:
    from handjax import config as configs
    from handjax.cache import check_cache_dir
    from handjax.models.kernels import plan as plans
    parsed = configs.parse(_CONFIG.value)
    check_cache_dir()
    specs = list(parsed.cells.values()) if isinstance(parsed, configs.SweepSpec) else [parsed]
    done = tune_specs(specs, _AGAIN.value, _BUDGET.value)
    cached = plans.read()["layers"]
    for spec, plan, seconds in done:
        how = {k: (cached.get(k) or {}).get("how", "table") for k, _ in plan.layers}
        state = ("measured now in %.1f s" % seconds if seconds
                 else "already decided" if plan.machine else "nothing to measure")
        print(f"{spec.model.name} at {spec.data.image_size} px, batch "
              f"{spec.train.batch_size}, conv_impl={plan.policy}, compute dtype {plan.dtype}: "
              f"{state}")
        print(plan_table(plan, how))
    print(f"cache: {plans.cache_path()}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
