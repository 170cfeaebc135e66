"""The entry point behind ``launch.py``: the config is parsed into specs here, at one
boundary, the setup is checked (the cache folder), then one call runs a single cell
(``train.run``) or the sweep (``sweep.run``)."""
from __future__ import annotations

import errno
import re
from pathlib import Path

from handjax import config as configs
from handjax.cache import check_cache_dir
from handjax.data.folders import IMAGE_EXTENSIONS, resolve_path
from handjax.errors import SetupError
from handjax.train import workdir as workdirs

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def main(config, workdir, restart: bool = False) -> dict:
    """Run ``config`` (a ConfigDict) in ``workdir``: the study's sweep or one cell
    (``restart``: discard what a previous run left there). Everything a user can get wrong
    is checked before the first training step; a full disk anywhere is one line."""
    parsed = configs.parse(config)   # the config's paths resolved here, once
    workdir = resolve_path(workdir)
    spec = next(iter(parsed.cells.values())) if isinstance(parsed, configs.SweepSpec) else parsed
    configs.check_data_files(spec.data)
    workdirs.check_run_target(workdir, spec.data.root)   # never into photos or others' outputs
    check_cache_dir()
    try:
        if isinstance(parsed, configs.SweepSpec):
            from handjax.train import sweep
            return sweep.run(parsed, workdir, restart=restart)
        from handjax.train import run as train
        return train.run(parsed, workdir, restart=restart)
    except Exception as e:
        full = disk_full(e)
        if full is None:
            raise
        where = f" writing {full.filename}" if full.filename else f" under {workdir}"
        raise SetupError(f"no space left on the device{where}; free some space, then rerun "
                         "the same command to resume") from e


def disk_full(error: BaseException) -> OSError | None:
    """The ENOSPC (or quota) OSError behind ``error``, following its causes and contexts:
    orbax and tensorstore wrap the one from the write."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return error
        if "No space left on device" in str(error):   # tensorstore: the path in quotes
            paths = re.findall(r'"(/[^"]+)"', str(error))
            return OSError(errno.ENOSPC, "No space left on device", *paths[-1:])
        error = error.__cause__ or error.__context__
    return None


def dash_hint(parser, argv: list) -> list:
    """``argv`` unchanged, or one line and exit 2 when a file name in it begins with ``-``
    (argparse would take it for an unknown option): the line says to put ``--`` first."""
    known = set(parser._option_string_actions)
    for arg in argv:
        if arg == "--":
            break
        option = arg.split("=", 1)[0]
        if len(arg) > 1 and arg.startswith("-") and option not in known and (
                Path(arg).exists() or Path(arg).suffix.lower() in IMAGE_EXTENSIONS):
            parser.exit(2, f"handjax: error: {arg} begins with '-', so it reads as an option; "
                           f"put -- before the file names: {parser.prog} ... -- {arg}\n")
    return argv
