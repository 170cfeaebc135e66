"""The model's work in FLOPs, counted from a jaxpr the same way on every backend: what
``bench`` GFLOP/s and MFU figures and ``timing.json``'s ``flops_phase*`` divide by."""
from __future__ import annotations

import math


def jaxpr_flops(jaxpr) -> float:
    """Multiply-add FLOPs (2 per multiply-add) of the convolutions and matrix products in a
    (closed) jaxpr, nested ones included (a scan's body counts ``length`` times): the
    model's work, counted the same on every backend. XLA's own cost analysis cannot serve
    across backends: on GPU it leaves out the convolutions that run as cuDNN calls (it
    counted ~1% of VGG19's train step there)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            window = math.prod(rhs[d] for d in spec[2:])
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * window * rhs[spec[1]]
        elif name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
                lhs[d] for d in contract)
        times = eqn.params.get("length", 1) if name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                    total += times * jaxpr_flops(sub)
    return total


def xla_flops(compiled) -> float:
    """FLOPs of a compiled program by XLA's cost analysis (0.0 where it gives none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends without a cost model
        return 0.0
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    return float((cost or {}).get("flops", 0.0))
