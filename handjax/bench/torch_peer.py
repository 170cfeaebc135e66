"""The plain PyTorch reference of ``python -m handjax.bench protocol --torch``: the study's
protocol as a plain PyTorch script runs it (torchvision's VGG, random weights,
``channels_last``, ``torch.autocast`` bfloat16 on the CPU; the frozen base run at every
step, the folds one after another, each a fresh model), on exactly the arrays and folds
handjax uses (:func:`handjax.bench.keras_peer.keras_data`).

PyTorch is an optional extra (``pip install -e '.[torch]'``); without it ``--torch`` refuses
in one line (:data:`NO_TORCH`).
"""
from __future__ import annotations

import time

import numpy as np

from handjax.bench.keras_peer import keras_data, peak_rss_gib
from handjax.models import backbones

NO_TORCH = ("bench protocol --torch: torch/torchvision are not installed; "
            "pip install -e '.[torch]'")
# handjax backbone -> torchvision.models constructor (the VGGs: their stage boundaries are
# the max-pools of ``features``, as handjax's "blockN_pool").
TORCH_MODELS = {"vgg16": "vgg16", "vgg19": "vgg19"}
# torchvision's ImageNet normalisation, what a plain torchvision script applies.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def import_torch():
    """(torch, torchvision), or a one-line exit when they are not installed."""
    try:
        import torch
        import torchvision
    except ImportError:
        raise SystemExit(NO_TORCH) from None
    return torch, torchvision


def split_index(features, split: str) -> int:
    """Index in torchvision's ``features`` of the max-pool named ``split`` ("blockN_pool":
    the N-th pool): the layers after it are phase 2's trainable ones."""
    import torch
    pools = [i for i, m in enumerate(features) if isinstance(m, torch.nn.MaxPool2d)]
    block = int(split.removeprefix("block").removesuffix("_pool"))
    return pools[block - 1]


def torch_model(torch, torchvision, fast, n_classes: int):
    """A fresh torchvision base (random weights) + the study's head: global average pooling
    -> Linear(hidden) -> ReLU -> Dropout -> Linear(classes), in ``channels_last``.
    Returns (features, pooled, model): ``pooled(x)`` is the head's input."""
    nn = torch.nn
    base = getattr(torchvision.models, TORCH_MODELS[fast.model.name])(weights=None).features
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = nn.Sequential(nn.Linear(512, fast.model.hidden), nn.ReLU(),
                         nn.Dropout(fast.model.dropout), nn.Linear(fast.model.hidden, n_classes))
    model = nn.Sequential(base, pool, head).to(memory_format=torch.channels_last)
    return base, lambda x: pool(base(x)), model


def to_input(torch, views_u8: np.ndarray):
    """uint8 [..., H, W, 3] photos -> normalised float32 [..., 3, H, W], stored channels
    last (the NHWC data, permuted: no copy)."""
    x = torch.from_numpy(views_u8).float().div_(255.0)
    x = (x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    return x.movedim(-1, -3)


def batch(torch, x):
    """A batch [B, 3, H, W] in ``channels_last`` memory (what the convs are fed)."""
    return x.contiguous(memory_format=torch.channels_last)


def torch_fit(torch, model, x_views, y, train_idx, *, lr: float, epochs: int,
              batch_size: int, rng, val, autocast: bool) -> None:
    """Adam(lr) on the trainable parameters for ``epochs`` epochs, each training example in
    one random view per epoch (as handjax draws them), shuffled batches, then the
    validation fold's loss after every epoch (as Keras' ``validation_data``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        view = rng.integers(0, len(x_views), size=len(train_idx))
        order = rng.permutation(len(train_idx))
        for start in range(0, len(order), batch_size):
            b = order[start:start + batch_size]
            xb = batch(torch, x_views[torch.from_numpy(view[b]), torch.from_numpy(train_idx[b])])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(model(xb), y[train_idx[b]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss_fn(model(batch(torch, val[0])), val[1]).item()


def svm_accuracy(pooled: np.ndarray, labels, train_idx, test_idx, svm) -> float:
    """Accuracy of an SVM (standardised like ``handjax.evaluation.scoring``) fitted on the
    training images' pooled features and scored on the test images'."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    clf = make_pipeline(StandardScaler(), SVC(kernel=svm.kernel, C=svm.C, random_state=0,
                                              class_weight=svm.class_weight or None))
    clf.fit(pooled[train_idx].astype(np.float64), labels[train_idx])
    return float(clf.score(pooled[test_idx].astype(np.float64), labels[test_idx]))


def torch_evaluate(torch, model, pooled_fn, x, labels, train_idx, test_idx, svm, *,
                   batch_size: int, autocast: bool) -> tuple[float, float]:
    """CNN test accuracy (the model on the test images), and the SVM's on the pooled
    features of every image (view 0): the two passes Keras' ``predict`` calls make."""
    model.eval()

    def run(fn, x):
        return torch.cat([fn(batch(torch, x[i:i + batch_size]))
                          for i in range(0, len(x), batch_size)]).float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = run(model, x[torch.from_numpy(test_idx)])
        pooled = run(pooled_fn, x)
    cnn = float(np.mean(logits.argmax(-1).numpy() == labels[test_idx]))
    return cnn, svm_accuracy(pooled.numpy(), labels, train_idx, test_idx, svm)


def torch_fold(torch, torchvision, fast, x_views, labels, n_classes: int, k: int, fold,
               timing: dict, autocast: bool) -> tuple[float, float]:
    """Fold ``k`` as a plain script runs it: a fresh model, phase 1 with the base frozen
    (still run forward at every step), phase 2 with the layers after the split trainable,
    then evaluation (CNN, SVM accuracy). Adds its train and evaluate seconds to ``timing``."""
    t = time.perf_counter()
    (train_idx, test_idx), tr = fold, fast.train
    torch.manual_seed(fast.seed + k)
    y = torch.from_numpy(np.asarray(labels, np.int64))
    base, pooled_fn, model = torch_model(torch, torchvision, fast, n_classes)
    fit = dict(batch_size=tr.batch_size, rng=np.random.default_rng([fast.seed, k]),
               val=(x_views[0, torch.from_numpy(test_idx)], y[test_idx]), autocast=autocast)
    base.requires_grad_(False)
    torch_fit(torch, model, x_views, y, train_idx, lr=tr.lr1, epochs=tr.epochs1, **fit)
    split = fast.model.split or backbones.DEFAULT_TRAINABLE_FROM[fast.model.name]
    base[split_index(base, split) + 1:].requires_grad_(True)
    torch_fit(torch, model, x_views, y, train_idx, lr=tr.lr2, epochs=tr.epochs2, **fit)
    timing["run_s"] += time.perf_counter() - t
    t = time.perf_counter()
    accs = torch_evaluate(torch, model, pooled_fn, x_views[0], labels, train_idx, test_idx,
                          fast.svm, batch_size=tr.batch_size, autocast=autocast)
    timing["evaluate_s"] += time.perf_counter() - t
    return accs


def torch_protocol(fast, autocast: bool = True) -> dict:
    """The study's protocol on ``fast``'s data and folds, written plainly in PyTorch
    (``autocast``: bfloat16 autocast on the CPU, else float32)."""
    torch, torchvision = import_torch()
    t0 = time.perf_counter()
    labels, n_classes, folds, views = keras_data(fast)
    x_views = to_input(torch, views)   # [V, N, 3, H, W]
    timing = {"prepare_s": time.perf_counter() - t0, "run_s": 0.0, "evaluate_s": 0.0}
    accs = [torch_fold(torch, torchvision, fast, x_views, labels, n_classes, k,
                       (np.asarray(tr), np.asarray(te)), timing, autocast)
            for k, (tr, te) in enumerate(folds)]
    wall = time.perf_counter() - t0
    cnn, svm = (list(a) for a in zip(*accs))
    return {"wall_s": wall, "timing": timing, "torch": torch.__version__,
            "dtype": "bfloat16 autocast" if autocast else "float32",
            "threads": torch.get_num_threads(),
            "cnn_acc": float(np.mean(cnn)), "svm_acc": float(np.mean(svm)),
            "cnn_acc_per_fold": cnn, "svm_acc_per_fold": svm, "peak_rss_gib": peak_rss_gib()}
