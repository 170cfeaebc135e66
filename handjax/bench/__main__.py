"""``python -m handjax.bench …``: see :mod:`handjax.bench.suite`."""
import sys

from handjax.bench.suite import main

if __name__ == "__main__":   # a spawned worker imports this module too (as __mp_main__)
    sys.exit(main())
