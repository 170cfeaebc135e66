"""The study's protocol, shared by every experiment: ``handjax.config.get_config``.

Each study cell (``experiments/<model>_<loss>.py``) is ``handjax.config.cell(model, loss)``.
Run one with, e.g.::

    python launch.py --config experiments/vgg19_custom.py
    python launch.py --config experiments/vgg19_custom.py:smoke   # 2-core CPU, < 2 min

Override any field from the command line: ``--config.train.lr2=3e-5``; a misspelt key is
an error. ``--config.data.root=/path/to/photos`` trains on your own ImageFolder of photos
(``normal/``, ``heberden/``, ``ra/``) instead of the embedded synthetic hands.
"""
from handjax.config import get_config# noqa: F401  (the protocol itself)
