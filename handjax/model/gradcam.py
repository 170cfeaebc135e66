"""Grad-CAM of one member of the locked model: where it looked for a class.

For class ``c`` the gradient of the member's class score with respect to the backbone's final
feature map gives one weight per channel (its spatial mean); the ReLU of the weighted channel
sum, divided by its peak, is the map (:func:`grad_cam`). :func:`member_forward` computes it
for every class of a batch of raw photos. Drawing it over a photo is the report's job
(:func:`handjax.report.plots.gradcam_overlay`).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from handjax.evaluation.scoring import probabilities
from handjax.models import backbones
from handjax.models.classifier import Classifier


def grad_cam(score_fn: Callable, feats) -> jax.Array:
    """Grad-CAM of one image: ``feats`` [h, w, C] -> map [h, w] scaled to [0, 1].

    ``score_fn(feats) -> scalar`` is the class score. Channel weights are the spatial mean
    of its gradient; the map is the ReLU of the weighted channel sum, divided by its peak
    (an all-zero map stays zero: no region speaks for the class).
    """
    feats = jnp.asarray(feats, jnp.float32)
    weights = jnp.mean(jax.grad(score_fn)(feats), axis=(0, 1))
    cam = jax.nn.relu(jnp.einsum("hwc,c->hw", feats, weights))
    peak = jnp.max(cam)
    return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)


def member_forward(model: Classifier, loss_name: str) -> Callable:
    """Jitted ``f(v, x) -> cams [B, n, h, w]`` for one member's variables ``v``.

    ``x`` are raw RGB images in [0, 255]; ``cams[:, c]`` is the Grad-CAM of class ``c``.
    The class score is the head applied to the spatial mean of the final feature map, so
    the gradient is taken with respect to that map (for ordinal heads the score is the
    class's log-probability, since no single logit belongs to a class).
    """
    def forward(v, x):
        bvars = {"params": v["params"]["backbone"], "batch_stats": v["batch_stats"]["backbone"]}
        feats = model.backbone.apply(bvars, backbones.preprocess(model.backbone_name, x),
                                     train=False).astype(jnp.float32)

        def logits_of(f):  # one image's feature map [h, w, C] -> logits [n]
            pooled = jnp.mean(f, axis=(0, 1))[None]
            return model.apply(v, pooled, train=False, mode="pooled")[0][0]

        def score(g, c):
            if model.ordinal:
                return jnp.log(probabilities(loss_name, logits_of(g)[None])[0, c] + 1e-12)
            return logits_of(g)[c]

        classes = jnp.arange(model.num_classes)
        return jax.vmap(lambda f: jax.vmap(
            lambda c: grad_cam(lambda g: score(g, c), f))(classes))(feats)

    return jax.jit(forward)
