"""``python -m handjax.bench …``: see :mod:`handjax.bench.suite`."""
import sys

from handjax.bench.suite import main

sys.exit(main())
