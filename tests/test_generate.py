"""Cached generation against full forward passes (tiny random model, fp32 CPU)."""

import dataclasses

import numpy as np
import pytest
from conftest import IMAGE, VEND, VIDEO, VSTART, pixels, vision_block

import tempura_jax
from tempura_jax.inference.generate import SamplingConfig, generate, sample_token

SUPPRESS = (IMAGE, VIDEO, VSTART, VEND)  # a random model must not emit placeholders
STEPS = 6


@pytest.fixture(scope="module")
def model(hf_model_dir):
    path = hf_model_dir("tied")[1]
    return tempura_jax.load_pretrained(path, dtype="float32", compute_dtype="float32")


def _sample(kind: str):
    if kind == "image":
        grid = [1, 6, 8]
        ids = [5, 6] + vision_block(grid) + [7, 8, 9]
        return ids, dict(pixel_values=pixels([grid], seed=3), image_grid_thw=np.array([grid]))
    if kind == "video":
        grid = [2, 4, 6]
        ids = [11] + vision_block(grid, VIDEO) + [12, 13]
        media = dict(pixel_values_videos=pixels([grid], seed=4), video_grid_thw=np.array([grid]))
        return ids, media
    return [21, 22, 23, 24, 25, 26, 27], {}


def _full_forward_greedy(model, ids, media, steps):
    """Reference: recompute the whole sequence for every new token."""
    seq, logits = list(ids), []
    for _ in range(steps):
        out = np.asarray(model(np.array([seq]), **media).logits)[0, -1]
        logits.append(out)
        masked = out.copy()
        masked[list(SUPPRESS)] = -np.inf
        seq.append(int(masked.argmax()))
    return seq[len(ids) :], np.stack(logits)


@pytest.mark.parametrize("kind", ["image", "video", "text"])
def test_cached_greedy_equals_full_forward(model, kind):
    ids, media = _sample(kind)
    inputs = tempura_jax.prepare_inputs(model.config, np.array([ids]), **media)
    cfg = SamplingConfig(max_new_tokens=STEPS, suppress_ids=SUPPRESS)
    out = generate(model, inputs, cfg, return_logits=True)
    ref_tokens, ref_logits = _full_forward_greedy(model, ids, media, STEPS)
    assert out.tokens[0].tolist() == ref_tokens
    np.testing.assert_allclose(out.logits[0], ref_logits, atol=1e-4)
    assert np.abs(ref_logits).max() > 1.0


def _left_padded(samples):
    s = max(len(ids) for ids, _ in samples)
    ids = np.zeros((len(samples), s), np.int64)
    mask = np.zeros_like(ids)
    for i, (row, _) in enumerate(samples):
        ids[i, s - len(row) :], mask[i, s - len(row) :] = row, 1
    media = {}
    for _, m in samples:
        for k, v in m.items():
            media[k] = np.concatenate([media[k], v]) if k in media else v
    return ids, mask, media


def test_batched_equals_per_sample(model):
    samples = [_sample("image"), _sample("text"), _sample("video")]
    ids, mask, media = _left_padded(samples)
    cfg = SamplingConfig(max_new_tokens=STEPS, suppress_ids=SUPPRESS)
    inputs = tempura_jax.prepare_inputs(model.config, ids, mask, **media)
    batched = generate(model, inputs, cfg, return_logits=True)
    for i, (row, m) in enumerate(samples):
        one = generate(
            model, tempura_jax.prepare_inputs(model.config, np.array([row]), **m), cfg,
            return_logits=True,
        )  # fmt: skip
        assert batched.tokens[i].tolist() == one.tokens[0].tolist()
        np.testing.assert_allclose(batched.logits[i], one.logits[0], atol=1e-4)


def test_greedy_sample_token_is_argmax():
    import jax.numpy as jnp

    logits = jnp.log(jnp.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]))
    assert sample_token(logits, None, 0.0, 1.0).tolist() == [1, 0]


def test_stop_and_lengths(model):
    ids, media = _sample("image")
    inputs = tempura_jax.prepare_inputs(model.config, np.array([ids, ids]), **_twice(media))
    free = generate(model, inputs, SamplingConfig(max_new_tokens=STEPS, suppress_ids=SUPPRESS))
    stop = int(free.tokens[0, 2])
    first = free.tokens[0].tolist().index(stop)
    cfg = SamplingConfig(max_new_tokens=STEPS, suppress_ids=SUPPRESS, stop_ids=(stop,), pad_id=-7)
    out = generate(model, inputs, cfg)
    assert out.lengths.tolist() == [first + 1] * 2
    assert out.tokens[0, : first + 1].tolist() == free.tokens[0, : first + 1].tolist()
    assert (out.tokens[:, first + 1 :] == -7).all()
    assert out.rows()[0][-1] == stop


def _twice(media):
    out = {}
    for k, v in media.items():
        out[k] = np.concatenate([v, v])
    return out


def test_sampling_is_seeded_and_top_p_narrows(model):
    ids, media = _sample("text")
    inputs = tempura_jax.prepare_inputs(model.config, np.array([ids]), **media)
    # A high temperature: the random model is confident, sampling must differ by seed.
    base = dict(max_new_tokens=STEPS, suppress_ids=SUPPRESS, temperature=50.0)
    a = generate(model, inputs, SamplingConfig(**base, seed=1)).tokens
    b = generate(model, inputs, SamplingConfig(**base, seed=1)).tokens
    c = generate(model, inputs, SamplingConfig(**base, seed=2)).tokens
    assert (a == b).all() and not (a == c).all()
    # A tiny nucleus keeps only the top token: sampling becomes greedy.
    nucleus = generate(model, inputs, SamplingConfig(**base, seed=3, top_p=1e-6)).tokens
    greedy = generate(model, inputs, SamplingConfig(max_new_tokens=STEPS, suppress_ids=SUPPRESS))
    assert (nucleus == greedy.tokens).all()


def test_right_padding_is_refused(model):
    ids = np.array([[5, 6, 7, 0]])
    inputs = tempura_jax.prepare_inputs(model.config, ids, np.array([[1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, inputs, SamplingConfig(max_new_tokens=2))


def test_new_seeds_and_temperatures_reuse_one_compilation(model):
    from tempura_jax.inference.generate import _generate

    ids, media = _sample("text")
    inputs = tempura_jax.prepare_inputs(model.config, np.array([ids]), **media)
    # STEPS + 1 new tokens: a program no other test compiles.
    base = dict(max_new_tokens=STEPS + 1, suppress_ids=SUPPRESS)
    a = generate(model, inputs, SamplingConfig(**base, temperature=50.0, seed=1)).tokens
    compiled = _generate._cache_size()
    b = generate(model, inputs, SamplingConfig(**base, temperature=50.0, seed=1)).tokens
    c = generate(model, inputs, SamplingConfig(**base, temperature=50.0, seed=2)).tokens
    d = generate(model, inputs, SamplingConfig(**base, temperature=9.0, top_p=0.9, seed=3))
    assert _generate._cache_size() == compiled  # seed, temperature, top_p are traced
    assert (a == b).all() and not (a == c).all() and d.tokens.shape == a.shape
    generate(model, inputs, SamplingConfig(**base))  # greedy: other control flow
    assert _generate._cache_size() == compiled + 1


def test_zero_new_tokens_is_refused(model):
    inputs = tempura_jax.prepare_inputs(model.config, np.array([[5, 6, 7]]))
    with pytest.raises(ValueError, match="at least 1"):
        generate(model, inputs, SamplingConfig(max_new_tokens=0))


def test_chunks_equal_one_run_and_share_one_program(model):
    """generate_chunks (prefill, then a chunk of steps per call) gives generate's
    tokens and logits at any chunk size, from one compiled chunk program."""
    from tempura_jax.inference.generate import _chunk, generate_chunks

    samples = [_sample("image"), _sample("text")]
    ids, mask, media = _left_padded(samples)
    inputs = tempura_jax.prepare_inputs(model.config, ids, mask, **media)
    cfg = SamplingConfig(max_new_tokens=STEPS, suppress_ids=SUPPRESS)
    whole = generate(model, inputs, cfg, return_logits=True)
    compiled = None
    for chunk in (1, 2, STEPS):
        parts = list(generate_chunks(model, inputs, cfg, chunk, return_logits=True))
        assert len(parts) == 1 + -(-(STEPS - 1) // chunk)  # the prefill's token, then chunks
        assert [p.lengths.tolist() for p in parts][0] == [1, 1]
        for p, q in zip(parts, parts[1:], strict=False):  # each chunk extends the last
            n = p.lengths[0]
            assert (q.tokens[:, :n] == p.tokens[:, :n]).all() and (q.lengths > p.lengths).all()
        assert (parts[-1].tokens == whole.tokens).all()
        assert (parts[-1].lengths == whole.lengths).all() and not parts[-1].done.any()
        np.testing.assert_allclose(parts[-1].logits, whole.logits, atol=1e-5)
        compiled = compiled or _chunk._cache_size()
        assert _chunk._cache_size() == compiled  # the chunk end is traced
    # Once every row stopped at a stop id, no further chunk runs.
    ids, media = _sample("image")
    twice = tempura_jax.prepare_inputs(model.config, np.array([ids, ids]), **_twice(media))
    free = generate(model, twice, cfg).tokens[0].tolist()
    first = free.index(free[1])  # the row's first stop, at index 0 or 1
    parts = list(generate_chunks(model, twice, dataclasses.replace(cfg, stop_ids=(free[1],)), 1))
    assert len(parts) == first + 1 and parts[-1].done.all()
    assert parts[-1].lengths.tolist() == [first + 1] * 2
