"""Hand photos -> uint8 arrays, labels and ids; who is in them; how they are split.

One module per job, in the order photos flow through them:

* ``decode``: one photo file -> a padded square (``decode_image``).
* ``sources``: your ImageFolder and the synthetic set as TFDS builders, cached under
  ``$HANDJAX_CACHE/tfds`` (``load_folder``, ``load_synthetic``, ``describe``), and the
  optional metadata CSV (``load_metadata``: subjects, subgroup columns).
* ``splits``: near-duplicate and subject groups, stratified folds (``duplicate_groups``,
  ``copies_of`` (a second set's copies of the training photos), ``identical_groups``,
  ``label_conflicts``, ``merge_groups``, ``folds``, the inner validation splits
  ``inner_splits``).
* ``native``: the photos' sizes before resizing (``native_size_record``).
* ``augment``: random flips, warps and colour changes in pure JAX (``augment``).
* ``cohort``: the data record of a run (``Cohort``, ``load_cohort``): photos, views,
  subjects, metadata, folds; what evaluation and the reports read.
* ``synthetic``: the procedural hand renderer (``render_hand``); synthetic and medically
  meaningless.
* ``preview``: the contact-sheet CLI (``contact_sheet``, ``main``).
* ``folders``: paths a user names, resolved once (``resolve_path``), and the folders a
  command may write into (``check_output``, ``claim_output``: never another command's
  results, never photos; docs/reliability.md).
* ``store``: arrays in RAM, or in ``.npy`` files past a budget, read a batch at a time
  (``Store``, ``photo_store``, ``map_batches``).
* ``overlay``: Grad-CAM heat over a photo, as the web page and predict's PNGs show it
  (``heat_overlay``).
* ``records``: what they share (``CLASSES``, ``N_FOLDS``, ``DataError``, ``Examples``).

The face is light: ``from handjax.data import CLASSES`` imports neither TFDS nor JAX (so
the processes that draw synthetic photos import numpy and PIL alone); every other name
loads its module on first use. ``augment`` is a module here; its function is
``handjax.data.augment.augment``.

    python -m handjax.data preview --out sheet.png   # contact sheet of synthetic hands
"""
from __future__ import annotations

import importlib

from handjax.data.records import CLASSES, DISPLAY_NAMES, N_FOLDS, DataError, Examples

_LAZY = {
    "Cohort": "cohort", "load_cohort": "cohort",
    "decode_image": "decode", "contact_sheet": "preview", "main": "preview",
    "IMAGE_EXTENSIONS": "sources", "HandConditions": "sources", "SyntheticHands": "sources",
    "describe": "sources", "load_folder": "sources", "load_metadata": "sources",
    "load_synthetic": "sources", "duplicate_groups": "splits", "folds": "splits",
    "copies_of": "splits",
    "inner_splits": "splits", "merge_groups": "splits", "identical_groups": "splits",
    "label_conflicts": "splits", "SYNTHETIC_SIZE": "synthetic",
    "render_hand": "synthetic", "synthetic_metadata": "synthetic",
}

__all__ = ["CLASSES", "DISPLAY_NAMES", "N_FOLDS", "DataError", "Examples",
           *sorted(_LAZY)]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'handjax.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"handjax.data.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
