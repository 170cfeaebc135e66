"""A trained run is self-contained: damaged files and changed weights are one clear line."""
import json
from types import SimpleNamespace

import pytest

from handjax.model import ensemble as inference
from handjax.models import keras_weights
from handjax.errors import RunError


def test_missing_or_damaged_files_are_one_clear_line(tmp_path):
    with pytest.raises(RunError, match="config.json not found"):
        inference.load_run(tmp_path)
    (tmp_path / "config.json").write_text('{"name": ')
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(RunError, match="config.json is not valid JSON") as err:
        inference.load_run(tmp_path)
    assert "\n" not in str(err.value)


def test_a_changed_weight_file_is_refused(tmp_path):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"original weights")
    (tmp_path / "ledger.json").write_text(json.dumps(
        {"data": "x", "weights": keras_weights.file_hash(weights)}))
    spec = SimpleNamespace(model=SimpleNamespace(name="vgg16", weights=str(weights)), seed=0)
    inference.check_weights(tmp_path, spec)             # unchanged: fine
    weights.write_bytes(b"other weights")
    with pytest.raises(RunError, match="differs from the one this run was trained with"):
        inference.check_weights(tmp_path, spec)
    weights.unlink()
    with pytest.raises(RunError, match="cannot be read"):
        inference.check_weights(tmp_path, spec)
