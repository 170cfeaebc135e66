"""The study's SVM columns: an SVM fitted per fold on the CNN's pooled features.

Per fold, the pooled features of that fold's fine-tuned backbone (the head's input) go
through ``Pipeline([StandardScaler(), SVC(...)])`` fitted on the fold's training split and
scored on its test split.
"""
from __future__ import annotations

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC


def make_svm(*, kernel: str = "rbf", C: float = 1.0, class_weight=None,
             seed: int = 0) -> Pipeline:
    """StandardScaler + SVC, the features standardised on the training split only."""
    svc = SVC(kernel=kernel, C=C, class_weight=class_weight or None, random_state=seed)
    return Pipeline([("scale", StandardScaler()), ("svc", svc)])


def fit_predict(train_x, train_y, test_x, **svm_kwargs) -> np.ndarray:
    """Fit on one fold's training features and labels, return test predictions."""
    model = make_svm(**svm_kwargs)
    model.fit(np.asarray(train_x, np.float64), np.asarray(train_y))
    return model.predict(np.asarray(test_x, np.float64)).astype(np.int32)


def fold_predictions(pooled, labels, folds, **svm_kwargs) -> list[np.ndarray]:
    """Per fold ``k``: SVM fitted on ``pooled[k][train]``, predictions on ``pooled[k][test]``."""
    pooled = np.asarray(pooled)
    labels = np.asarray(labels)
    return [fit_predict(pooled[k][tr], labels[tr], pooled[k][te], **svm_kwargs)
            for k, (tr, te) in enumerate(folds)]
