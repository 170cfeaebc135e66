"""What every data module shares: the classes, the fold count, the error type, ``Examples``."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from handjax.errors import HandjaxError

CLASSES = ("normal", "heberden", "ra")
DISPLAY_NAMES = ("Normal", "Heberden's nodes", "Rheumatoid arthritis")
N_FOLDS = 5  # the study's 5-fold protocol: every class needs at least this many photos


class DataError(HandjaxError, ValueError):
    """Bad input data: a missing or malformed folder, an unreadable photo, too few images."""


class Examples(NamedTuple):
    """A whole data set in memory, ordered by (label, id).

    images: uint8 [N, S, S, 3]; labels: int32 [N] indexing ``class_names``; ids: stable
    strings (the path relative to the root for folders, ``synthetic/<class>/<i>`` otherwise).
    """

    images: np.ndarray
    labels: np.ndarray
    ids: list
    class_names: tuple
