"""rope_index against hand-worked tables and against transformers 4.57's
get_rope_index wherever that follows the original semantics."""

import numpy as np
import pytest
import torch
from conftest import IMAGE, VEND, VIDEO, VSTART, hf_config, vision_block

from tempura_jax import from_hf_dict, rope_index

CFG = from_hf_dict(hf_config("tied").to_dict())
T = 7  # any text token


def ids_of(*parts):
    return np.array([sum(parts, [])])


def test_text_only():
    pos, delta = rope_index(np.array([[T] * 5]), config=CFG)
    np.testing.assert_array_equal(pos[:, 0], np.tile(np.arange(5), (3, 1)))
    assert delta.tolist() == [[0]]


def test_one_image_hand_table():
    # T T <vs> [2x2 merged image] <ve> T  -> the image starts at 3; text resumes at max+1 = 5
    ids = ids_of([T, T], vision_block([1, 4, 4]), [T])
    pos, delta = rope_index(ids, config=CFG, image_grid_thw=[[1, 4, 4]])
    expected = np.array(
        [
            [0, 1, 2, 3, 3, 3, 3, 5, 6],
            [0, 1, 2, 3, 3, 4, 4, 5, 6],
            [0, 1, 2, 3, 4, 3, 4, 5, 6],
        ]
    )
    np.testing.assert_array_equal(pos[:, 0], expected)
    assert delta.tolist() == [[7 - 9]]


def test_video_temporal_step_hand_table():
    # 2 temporal slices, 1 FPS -> second_per_grid_t = 2 s, tokens_per_second = 2 -> step 4.
    ids = ids_of([T], vision_block([2, 4, 4], VIDEO), [T])
    pos, _ = rope_index(ids, config=CFG, video_grid_thw=[[2, 4, 4]], second_per_grid_ts=[2.0])
    vis = pos[:, 0, 2:10]
    np.testing.assert_array_equal(vis[0], [2, 2, 2, 2, 6, 6, 6, 6])
    np.testing.assert_array_equal(vis[1], [2, 2, 3, 3, 2, 2, 3, 3])
    np.testing.assert_array_equal(vis[2], [2, 3, 2, 3, 2, 3, 2, 3])
    np.testing.assert_array_equal(pos[:, 0, 10:], [[7, 8]] * 3)  # <ve> and T after max 6


def test_fractional_step_truncates_after_multiplying():
    # step 0.7 * 2 = 1.4: slices at floor(0, 1.4, 2.8, 4.2) = 0, 1, 2, 4.
    # transformers 4.5x truncates 0.7 to 0 first and would give all zeros.
    ids = ids_of(vision_block([4, 2, 2], VIDEO))
    pos, _ = rope_index(ids, config=CFG, video_grid_thw=[[4, 2, 2]], second_per_grid_ts=[0.7])
    np.testing.assert_array_equal(pos[0, 0, 1:5], [1, 2, 3, 5])


def test_per_frame_mode_spacing():
    """Each frame an image: one temporal id per frame, next frame max(h,w)/2 + 2 later."""
    grid = [1, 4, 6]  # merged 2 x 3
    ids = ids_of(*(vision_block(grid) for _ in range(3)))
    pos, _ = rope_index(ids, config=CFG, image_grid_thw=[grid] * 3)
    starts = [pos[0, 0, 1 + k * 8] for k in range(3)]  # 6 tokens + start/end per frame
    assert starts == [1, 6, 11]
    for k, s in enumerate(starts):
        frame = pos[:, 0, 1 + k * 8 : 7 + k * 8]
        assert set(frame[0]) == {s}
        np.testing.assert_array_equal(frame[1], s + np.array([0, 0, 0, 1, 1, 1]))
        np.testing.assert_array_equal(frame[2], s + np.array([0, 1, 2, 0, 1, 2]))


def test_mixed_and_padded_batch_hand_table():
    a = [T] + vision_block([1, 2, 2]) + vision_block([2, 2, 2], VIDEO) + [T]
    b = [T, T]
    ids = np.zeros((2, len(a)), np.int64)
    mask = np.zeros_like(ids)
    ids[0], mask[0] = a, 1
    ids[1, -2:], mask[1, -2:] = b, 1
    pos, delta = rope_index(
        ids,
        config=CFG,
        image_grid_thw=[[1, 2, 2]],
        video_grid_thw=[[2, 2, 2]],
        second_per_grid_ts=[0.5],
        attention_mask=mask,
    )
    # a: T=0 <vs>=1 img=2 <ve>=3 <vs>=4 vid t=(5, 5+floor(1*0.5*2)=6) <ve>=7 T=8
    np.testing.assert_array_equal(pos[0, 0], [0, 1, 2, 3, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(pos[:, 1], [[1] * 7 + [0, 1]] * 3)  # padding gets 1
    np.testing.assert_array_equal(delta[:, 0], [9 - 9, 2 - 9])


@pytest.mark.parametrize("spg", [1.0, 2.0, 3.0])
def test_matches_transformers_original_semantics(spg):
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf = Qwen2_5_VLForConditionalGeneration(hf_config("tied"))
    img, vid = [[1, 10, 14], [1, 4, 4]], [[3, 6, 8]]
    a = [T] + vision_block(img[0]) + [T, T] + vision_block(vid[0], VIDEO) + vision_block(img[1])
    b = [T] * 5 + vision_block([1, 4, 4])
    s = len(a)
    ids, mask = np.zeros((2, s), np.int64), np.zeros((2, s), np.int64)
    ids[0], mask[0] = a, 1
    ids[1, -len(b) :], mask[1, -len(b) :] = b, 1
    grids = np.array(img + [[1, 4, 4]])
    ours, our_delta = rope_index(
        ids,
        config=CFG,
        image_grid_thw=grids,
        video_grid_thw=vid,
        second_per_grid_ts=[spg],
        attention_mask=mask,
    )
    ref, ref_delta = hf.model.get_rope_index(
        torch.as_tensor(ids),
        torch.as_tensor(grids),
        torch.as_tensor(vid),
        torch.tensor([spg]),
        torch.as_tensor(mask),
    )
    np.testing.assert_array_equal(ours, ref.numpy())
    np.testing.assert_array_equal(our_delta, ref_delta.numpy())


def test_errors_name_the_problem():
    ids = ids_of([T], vision_block([1, 4, 4]))
    with pytest.raises(ValueError, match="image_grid_thw has 2 rows"):
        rope_index(ids, config=CFG, image_grid_thw=[[1, 4, 4]] * 2)
    with pytest.raises(ValueError, match="more image blocks"):
        rope_index(ids, config=CFG)
    short = np.array([[VSTART, IMAGE, IMAGE, VEND]])
    with pytest.raises(ValueError, match="needs 4 consecutive"):
        rope_index(short, config=CFG, image_grid_thw=[[1, 4, 4]])
