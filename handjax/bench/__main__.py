"""``python -m handjax.bench …``: see :mod:`handjax.bench.suite`."""
import sys

from handjax import cli
from handjax.bench.suite import main

if __name__ == "__main__":   # a spawned worker imports this module too (as __mp_main__)
    # one handler, as every command: a user error is one line (exit 1), Ctrl-C exits 130
    sys.exit(cli.command(main, cli.INTERRUPTED_ONLY)())
