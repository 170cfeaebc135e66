"""Checkpoints keyed by pytree paths: readable, restored by name, old layout still read,
damage and mismatch reported in one line."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import struct

from handjax.train import checkpoint
from handjax.errors import TrainingError


class State(struct.PyTreeNode):
    params: dict
    opt_state: object
    tag: str = struct.field(pytree_node=False, default="x")


def _state(scale=1.0):
    params = {"head": {"dense": {"kernel": scale * jnp.ones((3, 2)), "bias": jnp.zeros(2)}}}
    return State(params=params, opt_state=optax.adam(1e-3).init(params))


def test_paths_are_readable_names():
    names = ["/".join(p) for p, _ in checkpoint.leaf_paths(_state())]
    assert "params/head/dense/kernel" in names
    assert any(n.startswith("opt_state/0/mu/head/dense/") for n in names)


def test_save_restore_round_trip_by_name(tmp_path):
    mngr = checkpoint.manager(tmp_path)
    checkpoint.save(mngr, 1, _state(2.0))
    out = checkpoint.restore(mngr, 1, _state(0.0))
    np.testing.assert_array_equal(out.params["head"]["dense"]["kernel"], 2.0)
    assert out.tag == "x" and checkpoint.has_opt_state(mngr, 1, _state())
    checkpoint.close(mngr)
    # the files name the arrays: anyone can read them back without handjax
    meta = ocp.CheckpointManager(tmp_path / "checkpoints",
                                 item_handlers=ocp.StandardCheckpointHandler()).item_metadata(1)
    assert "kernel" in dict(meta)["params"]["head"]["dense"]


def test_state_without_optimiser_restores(tmp_path):
    mngr = checkpoint.manager(tmp_path)
    checkpoint.save(mngr, 3, _state(5.0).replace(opt_state=None))
    assert not checkpoint.has_opt_state(mngr, 3, _state())
    out = checkpoint.restore(mngr, 3, _state().replace(opt_state=None))
    np.testing.assert_array_equal(out.params["head"]["dense"]["kernel"], 5.0)
    checkpoint.close(mngr)


def test_old_index_keyed_checkpoints_still_restore(tmp_path):
    like = _state(7.0)
    flat = {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(like))}
    mngr = checkpoint.manager(tmp_path)
    mngr.save(1, args=ocp.args.StandardSave(flat))
    mngr.wait_until_finished()
    out = checkpoint.restore(mngr, 1, _state(0.0))
    np.testing.assert_array_equal(out.params["head"]["dense"]["kernel"], 7.0)
    checkpoint.close(mngr)


def test_other_model_is_one_clear_line(tmp_path):
    mngr = checkpoint.manager(tmp_path)
    checkpoint.save(mngr, 1, _state())
    other = State(params={"head": {"other": {"kernel": jnp.ones((3, 2))}}},
                  opt_state=None)
    with pytest.raises(TrainingError, match="head/other/kernel"):
        checkpoint.restore(mngr, 1, other)
    checkpoint.close(mngr)


def test_damaged_metadata_is_one_clear_line(tmp_path):
    mngr = checkpoint.manager(tmp_path)
    checkpoint.save(mngr, 1, _state())
    checkpoint.close(mngr)
    for meta in (tmp_path / "checkpoints" / "1").rglob("_METADATA"):
        meta.write_text("{not json")
    mngr = checkpoint.manager(tmp_path)
    with pytest.raises(TrainingError) as err:
        checkpoint.restore(mngr, 1, _state())
    assert "checkpoints/1" in str(err.value) and "\n" not in str(err.value)
    json.dumps(str(err.value))


def test_truncated_array_file_is_one_clear_line(tmp_path):
    mngr = checkpoint.manager(tmp_path)
    checkpoint.save(mngr, 1, _state(3.0))
    checkpoint.close(mngr)
    files = [p for p in (tmp_path / "checkpoints" / "1").rglob("*")
             if p.is_file() and p.stat().st_size > 64 and "METADATA" not in p.name
             and p.suffix != ".json"]
    for p in files:                      # cut every data file in half
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    mngr = checkpoint.manager(tmp_path)
    with pytest.raises(TrainingError, match="cannot be read"):
        checkpoint.restore(mngr, 1, _state())
