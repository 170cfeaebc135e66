"""Hand photos -> uint8 arrays, labels and ids; cross-validation folds; augmentation.

One module per job, in the order photos flow through them:

* ``decode``: one photo file -> a padded square (``decode_image``).
* ``sources``: your ImageFolder and the synthetic set as TFDS builders, cached under
  ``$HANDJAX_CACHE/tfds`` (``load_folder``, ``load_synthetic``, ``describe``), and the
  optional metadata CSV (``load_metadata``: subjects, subgroup columns).
* ``splits``: near-duplicate and subject groups, stratified folds (``duplicate_groups``,
  ``identical_groups``, ``label_conflicts``, ``merge_groups``, ``folds``, the inner
  validation splits ``inner_splits``).
* ``augment``: random flips, warps and colour changes in pure JAX (``augment``).
* ``synthetic``: the procedural hand renderer (``render_hand``); synthetic and medically
  meaningless.
* ``preview``: the contact-sheet CLI (``contact_sheet``, ``main``).
* ``base``: what they share (``CLASSES``, ``N_FOLDS``, ``DataError``, ``Examples``).

    python -m handjax.data preview --out sheet.png   # contact sheet of synthetic hands
"""

from handjax.data.augment import augment
from handjax.data.base import CLASSES, DISPLAY_NAMES, N_FOLDS, DataError, Examples
from handjax.data.decode import decode_image
from handjax.data.preview import contact_sheet, main
from handjax.data.sources import (IMAGE_EXTENSIONS, HandConditions, SyntheticHands, describe,
                                  load_folder, load_metadata, load_synthetic)
from handjax.data.splits import (duplicate_groups, folds, identical_groups, inner_splits,
                                 label_conflicts, merge_groups)
from handjax.data.synthetic import SYNTHETIC_SIZE, render_hand, synthetic_metadata

__all__ = [
    "CLASSES", "DISPLAY_NAMES", "IMAGE_EXTENSIONS", "N_FOLDS", "SYNTHETIC_SIZE", "DataError",
    "Examples", "HandConditions", "SyntheticHands", "augment", "contact_sheet", "decode_image",
    "describe", "duplicate_groups", "folds", "identical_groups", "inner_splits",
    "label_conflicts", "load_folder", "load_metadata", "load_synthetic", "main",
    "merge_groups", "render_hand", "synthetic_metadata",
]
