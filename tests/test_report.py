"""The table writer and plots on fabricated per-fold results."""
import csv
import io
import json
import zlib

import numpy as np
import pytest
from matplotlib.image import imread

from handjax.report import plots, markdown as report

MODELS = ["vgg16", "vgg19", "resnet50", "mobilenetv2"]
LOSSES = ["categorical", "binary", "custom"]
METRICS = ["accuracy", "custom_multi", "custom_plus", "custom_precision"]
COLUMNS = ["CNN_acc", "CNN_cus_multi", "CNN_cus_plus", "CNN_cus_precision",
           "SVM_acc", "SVM_cus_multi", "SVM_cus_plus", "SVM_cus_precision",
           "MEC_acc", "MEC_cus_multi", "MEC_cus_plus", "MEC_cus_precision"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_results(loss, model, seed=0, decisions=("cnn", "cnn_mec", "svm")):
    rng = np.random.default_rng(zlib.crc32(f"{loss}/{model}".encode()))  # stable per cell
    out = {}
    for d in decisions:
        per_fold = {m: rng.uniform(0.0, 1.0, size=5).round(4).tolist() for m in METRICS}
        confusion = rng.integers(0, 6, size=(5, 3, 3))
        out[d] = {"per_fold": per_fold, "confusion": confusion.tolist(),
                  "confusion_sum": confusion.sum(0).tolist()}
    return {"name": f"{model}_{loss}", "model": model, "loss": loss, "weights": "imagenet",
            "image_size": 224, "n_folds": 5, "seed": seed,
            "data": {"source": "synthetic", "n": 150,
                     "class_names": ["normal", "heberden", "ra"],
                     "class_counts": {"normal": 50, "heberden": 50, "ra": 50},
                     "duplicate_groups": 0},
            "decisions": out, "wall_time_s": 12.5}


def full_grid():
    return {(l, m): fake_results(l, m) for l in LOSSES for m in MODELS}


def table_rows(markdown):
    """Body rows of the one Markdown table in ``markdown``, as lists of cells."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def pm_parts(text):
    mean, std = text.split(" ± ")
    return float(mean), float(std)


# ---- numbers ------------------------------------------------------------------------
def test_summarize_is_mean_and_population_std():
    mean, std = report.summarize({"accuracy": [1.0, 2.0, 3.0, 4.0, 5.0], "x": [2.0, 2.0]})
    assert mean == {"accuracy": 3.0, "x": 2.0}
    assert std["accuracy"] == pytest.approx(2.0 ** 0.5, rel=1e-12)  # ddof=0, not sqrt(2.5)
    assert std["x"] == 0.0


def test_format_pm():
    assert report.format_pm(0.76874, 0.01234) == "0.7687 ± 0.0123"
    assert report.format_pm(1.0, 0.0, digits=2) == "1.00 ± 0.00"


# ---- study table --------------------------------------------------------------------
def test_study_layout_and_cell_formatting():
    cells = full_grid()
    # A hand-computed cell: mean 0.74, population std sqrt(0.0008) = 0.02828.
    cells[("binary", "vgg19")]["decisions"]["svm"]["per_fold"]["accuracy"] = \
        [0.70, 0.72, 0.74, 0.76, 0.78]
    cells[("binary", "vgg19")]["clinical"] = {"cnn_calibrated": {
        "auroc_macro": {"value": 0.852, "ci95": [0.802, 0.896]}, "qwk": {"value": 0.5},
        "sensitivity_ra": {"value": 0.76}, "ece_sweep": {"value": None}}}
    markdown, csv_text, missing = report.study_table(cells, MODELS, LOSSES)
    assert missing == []
    assert "Missing cells: none." in markdown
    header, sep, *body = table_rows(markdown)
    assert header == ["loss", "model", *COLUMNS, *report.CLINICAL_COLUMNS]
    clinical = body[6][2 + len(COLUMNS):]
    assert clinical == ["0.852 [0.802, 0.896]", "0.500", "0.760", "n/a"]
    assert body[0][2 + len(COLUMNS):] == ["n/a"] * 4          # a cell run before them
    assert len(body) == 3 * (4 + 1)
    expected_first_cols = []
    for group in ["categorical", "binary", "custom_loss"]:
        expected_first_cols += [[group, name] for name in
                                ["VGG16", "VGG19", "ResNet50", "MobileNetV2"]]
        expected_first_cols.append([group, "mean (4 models)"])
    assert [row[:2] for row in body] == expected_first_cols
    vgg19_binary = body[6]
    assert vgg19_binary[2 + COLUMNS.index("SVM_acc")] == "0.7400 ± 0.0283"
    # Every model cell is "mean ± std" of its own per-fold list (numpy, independently).
    for li, loss in enumerate(LOSSES):
        for mi, model in enumerate(MODELS):
            row = body[li * 5 + mi]
            for d, prefix in [("cnn", "CNN"), ("svm", "SVM"), ("cnn_mec", "MEC")]:
                for m, suffix in zip(METRICS, ["acc", "cus_multi", "cus_plus", "cus_precision"]):
                    vals = np.array(cells[(loss, model)]["decisions"][d]["per_fold"][m])
                    got = pm_parts(row[2 + COLUMNS.index(f"{prefix}_{suffix}")])
                    assert got == pytest.approx((vals.mean(), vals.std()), abs=5e-5)
    # CSV carries the same rows.
    csv_rows = list(csv.reader(io.StringIO(csv_text)))
    assert csv_rows[0] == header and csv_rows[1:] == body


def test_mean_rows_average_the_model_means():
    cells = full_grid()
    markdown, _, _ = report.study_table(cells, MODELS, LOSSES)
    body = table_rows(markdown)[2:]
    for li, loss in enumerate(LOSSES):
        mean_row = body[li * 5 + 4]
        for m, col in [("accuracy", "CNN_acc"), ("custom_plus", "SVM_cus_plus"),
                       ("custom_precision", "MEC_cus_precision")]:
            d = {"CNN": "cnn", "SVM": "svm", "MEC": "cnn_mec"}[col.split("_")[0]]
            model_means = [np.mean(cells[(loss, mo)]["decisions"][d]["per_fold"][m])
                           for mo in MODELS]
            got = pm_parts(mean_row[2 + COLUMNS.index(col)])
            assert got == pytest.approx((np.mean(model_means), np.std(model_means)), abs=5e-5)


def test_missing_cell_is_reported_not_dropped():
    cells = full_grid()
    cells[("custom", "resnet50")] = None       # ran but did not finish
    del cells[("binary", "vgg16")]             # never ran
    markdown, csv_text, missing = report.study_table(cells, MODELS, LOSSES)
    assert sorted(missing) == [("binary", "vgg16"), ("custom", "resnet50")]
    body = table_rows(markdown)[2:]
    assert len(body) == 15  # rows kept
    assert body[5][:2] == ["binary", "VGG16"] and set(body[5][2:]) == {"missing"}
    assert body[12][:2] == ["custom_loss", "ResNet50"] and set(body[12][2:]) == {"missing"}
    assert body[14][1] == "mean (3 of 4 models)"
    assert body[4][1] == "mean (4 models)"
    assert "binary/VGG16" in markdown and "custom_loss/ResNet50" in markdown
    assert "missing" in csv_text
    # The custom_loss mean excludes the missing model.
    present = [np.mean(cells[("custom", m)]["decisions"]["cnn"]["per_fold"]["accuracy"])
               for m in MODELS if m != "resnet50"]
    assert pm_parts(body[14][2])[0] == pytest.approx(np.mean(present), abs=5e-5)


def test_header_states_setup_and_flags_disagreement():
    cells = full_grid()
    markdown, _, _ = report.study_table(cells, MODELS, LOSSES)
    for text in ["synthetic", "normal 50", "duplicate groups 0", "imagenet", "224",
                 "Folds: 5", "Seed: 0"]:
        assert text in markdown, text
    assert "disagree" not in markdown
    cells[("binary", "resnet50")]["seed"] = 1
    markdown, _, _ = report.study_table(cells, MODELS, LOSSES)
    assert "Seed: **cells disagree**" in markdown and "resnet50_binary" in markdown


# ---- per run and files --------------------------------------------------------------
def test_run_markdown_lists_folds_means_and_confusion():
    results = fake_results("categorical", "vgg19")
    md = report.run_markdown(results)
    cnn = results["decisions"]["cnn"]
    assert "# Run vgg19_categorical" in md and "VGG19" in md
    assert f"{cnn['per_fold']['custom_plus'][3]:.4f}" in md
    mean = np.mean(cnn["per_fold"]["accuracy"])
    std = np.std(cnn["per_fold"]["accuracy"])
    assert f"{mean:.4f} ± {std:.4f}" in md
    row = cnn["confusion_sum"][2]
    assert f"| **ra** | {row[0]} | {row[1]} | {row[2]} |" in md
    for title in ["CNN (argmax)", "minimum expected cost", "SVM probe"]:
        assert title in md


def _assert_png(path):
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_write_writes_a_run_s_markdown_and_plots(tmp_path):
    results = fake_results("custom", "mobilenetv2")
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for fold in range(5):
            for phase, epochs in [(1, 3), (2, 2)]:
                for epoch in range(epochs):
                    rec = {"fold": fold, "phase": phase, "epoch": epoch, "step": epoch * 4,
                           "loss": 1.0 / (epoch + 1), "accuracy": 0.5 + 0.1 * epoch}
                    if fold == 0:
                        rec.update(val_loss=1.2 / (epoch + 1), val_accuracy=0.4)
                    f.write(json.dumps(rec) + "\n")
    written = report.write(tmp_path, None, results)
    names = {p.name for p in written}
    assert {"results.md", "confusion_cnn.png", "confusion_svm.png", "curves.png"} <= names
    for name in ["confusion_cnn.png", "confusion_svm.png", "curves.png"]:
        _assert_png(tmp_path / name)
    assert (tmp_path / "results.md").read_text(encoding="utf-8") == report.run_markdown(results)


def test_write_without_curves(tmp_path):
    written = report.write(tmp_path, None, fake_results("binary", "vgg16", decisions=("cnn",)))
    assert {p.name for p in written} == {"results.md", "confusion_cnn.png"}


def test_write_study_files(tmp_path):
    cells = full_grid()
    cells[("binary", "vgg19")] = None
    missing = report.write_study(tmp_path / "study", cells, MODELS, LOSSES)
    assert missing == [("binary", "vgg19")]
    md = (tmp_path / "study" / "study.md").read_text(encoding="utf-8")
    assert md == report.study_table(cells, MODELS, LOSSES)[0]
    assert (tmp_path / "study" / "study.csv").read_text(encoding="utf-8").startswith("loss,model,")
    _assert_png(tmp_path / "study" / "study_acc_vs_plus.png")


def test_curves_titles_do_not_overlap():
    records = [{"fold": f, "phase": 1 + (e > 1), "epoch": e, "loss": 1.0 / (e + 1),
                "accuracy": 0.3 + 0.1 * e, "test_loss": 1.1, "test_accuracy": 0.4,
                "val_loss": 1.2, "val_accuracy": 0.35} for f in range(5) for e in range(3)]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = plots.curves_figure(records)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    boxes.append(fig._suptitle.get_window_extent(renderer))
    for i, a in enumerate(boxes):
        assert 0 <= a.x0 and a.x1 <= fig.bbox.width          # inside the figure
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
