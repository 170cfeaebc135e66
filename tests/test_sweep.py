"""The study sweep: cells in sub-workdirs, skipped when done, table with every cell."""
import json

import pytest

from cells import experiment
from handjax import config as configs
from handjax.cli import launch as run
from handjax.train import sweep
from handjax.errors import ConfigError

study = experiment("study")


@pytest.mark.slow  # six smoke cells end to end
def test_study_smoke_end_to_end(tmp_path, monkeypatch):
    config = study.get_config("smoke")
    config.models = "vgg16,mobilenetv2"        # 6 of the 12 cells: every loss, two families
    cells = run.main(config, tmp_path)
    assert set(cells) == {(l, m) for l in ("categorical", "binary", "custom")
                          for m in ("vgg16", "mobilenetv2")}
    md = (tmp_path / "study.md").read_text()
    for label in ("categorical", "binary", "custom_loss", "VGG16", "MobileNetV2",
                  "CNN_acc", "SVM_cus_plus", "MEC_cus_precision"):
        assert label in md
    assert "missing" not in md.split("|")[0]
    csv_rows = (tmp_path / "study.csv").read_text().strip().splitlines()
    assert len(csv_rows) >= 1 + 3 * 3                # header + (2 models + mean) x 3 losses
    assert (tmp_path / "study_acc_vs_plus.png").stat().st_size > 1000
    for loss in ("categorical", "binary", "custom"):
        res = json.loads((tmp_path / f"vgg16_{loss}" / "results.json").read_text())
        assert res["loss"] == loss and res["model"] == "vgg16"

    # A rerun skips finished cells: training must not be called again.
    def no_training(*a, **k):
        raise AssertionError("a finished cell was trained again")
    monkeypatch.setattr(sweep.train, "run", no_training)
    again = run.main(config, tmp_path)
    assert again.keys() == cells.keys()


def test_unknown_model_in_selection_is_a_clear_error(tmp_path):
    config = study.get_config("smoke")
    config.models = "vgg16,alexnet"
    with pytest.raises(ConfigError, match="config.models"):
        run.main(config, tmp_path)


def test_cell_config_sets_model_and_loss():
    c = configs.cell_config(study.get_config(), "resnet50", "custom")
    assert (c.model.name, c.loss.name, c.loss.ce_weight, c.loss.label) == (
        "resnet50", "soft_custom", 0.0, "custom")
    assert "models" not in c and c.name == "resnet50_custom"
    assert configs.cell_config(study.get_config("smoke"), "vgg16", "binary").name == "vgg16_binary_smoke"


def test_sweep_ledger_states(tmp_path):
    """``sweep_ledger.json``: pending cells listed up front, running with an owner and a
    start time, done with a finish time; a rerun's "pending" keeps what is recorded."""
    sweep.mark(tmp_path, "vgg16_binary", "pending")
    assert sweep.mark(tmp_path, "vgg16_binary", "running")["state"] == "running"
    done = sweep.mark(tmp_path, "vgg16_binary", "done")
    assert done["owner"] and done["started"] and done["finished"]
    sweep.mark(tmp_path, "vgg16_binary", "pending")
    sweep.mark(tmp_path, "vgg19_binary", "pending")
    ledger = json.loads((tmp_path / sweep.LEDGER).read_text())
    assert ledger["vgg16_binary"] == done and ledger["vgg19_binary"]["state"] == "pending"
