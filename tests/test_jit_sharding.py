"""Compilation behaviour and sharded-vs-unsharded equality."""

import logging

import jax
import numpy as np
import pytest
from conftest import vision_block
from jax.sharding import Mesh

import tempura_jax
from tempura_jax.sharding import model_shardings


class _CompileCounter(logging.Handler):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if "forward_logits" in msg and "ompil" in msg:
            self.names.append(msg)


def test_second_call_with_same_shapes_does_not_recompile(hf_model_dir):
    _, path = hf_model_dir("tied")
    model = tempura_jax.load_pretrained(path)
    rng = np.random.default_rng(0)

    def call(grid, seed):
        ids = np.array([[5] + vision_block(grid) + [6, 7]])
        px = rng.standard_normal((int(np.prod(grid)), 1176)).astype(np.float32)
        return model(ids, pixel_values=px, image_grid_thw=np.array([grid])).logits

    counter = _CompileCounter()
    logger = logging.getLogger("jax")
    logger.addHandler(counter)
    try:
        with jax.log_compiles(True):
            call([1, 4, 8], 0)
            first = len(counter.names)
            # Different grid values, same patch and token counts: same shapes.
            call([1, 8, 4], 1)
            call([1, 4, 8], 2)
            second = len(counter.names)
            call([1, 8, 8], 3)  # new shapes must compile
            third = len(counter.names)
    finally:
        logger.removeHandler(counter)
    assert first >= 1, "compile logging did not reach the counter"
    assert second == first, counter.names
    assert third > second


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 2, 4), (8, 1, 1)])
def test_sharded_load_matches_unsharded(hf_model_dir, shape):
    _, path = hf_model_dir("untied")
    grid = [1, 6, 8]
    ids = np.array([[5] + vision_block(grid) + [6, 7], [8] + vision_block(grid) + [9, 7]])
    media = dict(
        pixel_values=np.random.default_rng(1).standard_normal((96, 1176)).astype(np.float32),
        image_grid_thw=np.array([grid, grid]),
    )
    ref = np.asarray(tempura_jax.load_pretrained(path)(ids, **media).logits)

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(shape), ("data", "fsdp", "tensor"))
    model = tempura_jax.load_pretrained(path, mesh=mesh)
    q = model.model.layers[0].self_attn.q_proj.kernel[...]
    if shape[2] > 1:  # heads split over "tensor"
        assert q.sharding.spec[1] == "tensor", q.sharding
        assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape[1] < 4
    specs = model_shardings(model, mesh)
    embed = model.model.embed_tokens[...]
    assert specs["model"]["embed_tokens"].spec == embed.sharding.spec
    out = np.asarray(model(ids, **media).logits)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
