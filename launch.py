"""Run one cell of the study, or the whole sweep.

    python launch.py --config experiments/vgg19_custom.py [--workdir runs/x]
    python launch.py --config experiments/vgg19_custom.py:smoke
    python launch.py --config experiments/study.py --config.models=vgg19

Any config field can be overridden: ``--config.train.lr2=3e-5`` (a misspelt key is an
error). Outputs (config.json, metrics.jsonl, results.json/.md, plots, checkpoints) go to
``--workdir`` (default ``runs/<config name>``); rerunning the same command resumes.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/vgg19_custom.py[:smoke].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default runs/<config name>).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from handjax import run, user_errors
    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("runs", config.name)
    try:
        run.main(config, workdir)
    except user_errors() as e:  # one clear line, no traceback (HANDJAX_DEBUG=1 shows it)
        if os.environ.get("HANDJAX_DEBUG"):
            raise
        print(f"handjax: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
