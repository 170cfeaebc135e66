"""Run one cell of the study, or the whole sweep.

    python launch.py --config experiments/vgg19_custom.py [--workdir runs/x]
    python launch.py --config experiments/vgg19_custom.py:smoke
    python launch.py --config experiments/study.py --config.models=vgg19

Any config field can be overridden: ``--config.train.lr2=3e-5`` (a misspelt key is an
error). Outputs (config.json, metrics.jsonl, results.json/.md, plots, checkpoints) go to
``--workdir`` (default ``runs/<config name>``); rerunning the same command resumes.
The console shows progress bars, a few lines and a closing summary; ``-v`` (``--verbosity=1``)
brings back the libraries' INFO logs. ``HANDJAX_DEBUG=1`` shows tracebacks of user errors.
Many processes (README, "Many hosts"): ``--coordinator_address=host:port --num_processes=N
--process_id=i`` on each, or nothing under Slurm, Open MPI or on a TPU pod.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/vgg19_custom.py[:smoke].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default runs/<config name>).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Many processes: host:port of process 0 (with "
    "--num_processes and --process_id); Slurm, Open MPI and TPU pods are detected without.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Many processes: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Many processes: this one's index.")
_RESTART = flags.DEFINE_bool("restart", False, "Discard a previous run in --workdir first "
                             "(its checkpoints, metrics and results).")


def parse_flags(argv):
    """absl's parser, but a bad config file, key or value is one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError, SyntaxError,
            OSError) as e:
        from handjax import cli
        if cli.debugging():
            raise
        from handjax import config as configs
        sys.exit(cli.fail(f"bad flag or config: {configs.flag_error(e, argv)}", cli.EXIT_USAGE))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from handjax import cli, console
    from handjax.train import distributed
    try:   # before any JAX computation
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as e:
        sys.exit(cli.fail(str(e), cli.EXIT_USAGE))
    console.quiet(verbose=flags.FLAGS["verbosity"].present)
    config = cli.loaded_config(_CONFIG)
    workdir = _WORKDIR.value or os.path.join("runs", config.name)
    # one handler for every command: a user error is one line (exit 1), Ctrl-C exits 130
    # (checkpoints are written whole or not at all, so the same command resumes)
    cli.exit_process(cli.command(_launch)(config, workdir, _RESTART.value))


def _launch(config, workdir: str, restart: bool) -> None:
    from handjax.cli import launch
    launch.main(config, workdir, restart=restart)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=parse_flags)
