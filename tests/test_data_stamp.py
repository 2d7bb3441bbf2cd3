"""Timestamps are drawn where configured, in TEMPURA's format by default."""

import numpy as np
import pytest

from tempura_jax.data.stamp import StampConfig, stamp, stamp_box


def grey(h=180, w=320, v=128):
    return np.full((h, w, 3), v, np.uint8)


def test_default_tempura_stamp():
    frame = grey()
    out = stamp(frame, 12.0)
    x0, y0, x1, y1 = stamp_box(320, 180, "12.0", StampConfig())
    assert (x0, y0) == (0, 0)
    # Font size is width / 10 = 32 px: the box is about that tall, a few digits wide.
    assert 30 <= y1 - y0 <= 45 and 60 <= x1 - x0 <= 110
    box = out[y0:y1, x0:x1]
    assert set(np.unique(box)) - set(range(256)) == set()
    white = (box >= 200).all(-1)
    black = (box <= 40).all(-1)
    assert white.mean() > 0.1 and black.mean() > 0.4  # white text on a black box
    assert (white | black | ((box > 40) & (box < 200)).all(-1)).all()  # grey only at glyph edges
    rest = out.copy()
    rest[y0:y1, x0:x1] = 128
    np.testing.assert_array_equal(rest, frame)  # nothing else changes
    assert not np.shares_memory(out, frame) and (frame == 128).all()


def test_text_depends_on_time_and_format():
    a, b = stamp(grey(), 3.0), stamp(grey(), 7.0)
    assert not np.array_equal(a, b)
    # The reference's inference-time "{t:.2f}" is longer than the training "{t:.1f}".
    wide = stamp_box(320, 180, "3.00", StampConfig(format="{t:.2f}"))
    narrow = stamp_box(320, 180, "3.0", StampConfig())
    assert wide[2] > narrow[2]


@pytest.mark.parametrize("position", ["top-right", "bottom-left", "bottom-right"])
def test_positions(position):
    out = stamp(grey(), 5.0, StampConfig(position=position))
    changed = (out != 128).any(-1)
    ys, xs = np.nonzero(changed)
    top = position.startswith("top")
    left = position.endswith("left")
    assert (ys.min() == 0) if top else (ys.max() == 179)
    assert (xs.min() == 0) if left else (xs.max() == 319)


def test_size_and_off():
    small = stamp_box(640, 360, "1.0", StampConfig(size=0.05))
    big = stamp_box(640, 360, "1.0", StampConfig(size=0.1))
    assert big[3] > 1.7 * small[3]
    frame = grey()
    assert stamp(frame, 1.0, StampConfig(enabled=False)) is frame
    with pytest.raises(ValueError, match="position"):
        StampConfig(position="middle")


def test_cached_rendering_is_shared_and_read_only():
    """The box for a text is rendered once per frame size; stamping in place
    twice gives the same pixels and never writes into the cached box."""
    a, b = grey(v=10), grey(v=250)
    stamp(a, 4.0, inplace=True)
    stamp(b, 4.0, inplace=True)
    x0, y0, x1, y1 = stamp_box(320, 180, "4.0", StampConfig())
    np.testing.assert_array_equal(a[y0:y1, x0:x1], b[y0:y1, x0:x1])
    a[y0:y1, x0:x1] = 77  # the frame owns its pixels; the cache is unaffected
    np.testing.assert_array_equal(stamp(grey(), 4.0)[y0:y1, x0:x1], b[y0:y1, x0:x1])


@pytest.mark.parametrize("inplace", [True, False])
def test_rgbx_view_frames_get_the_same_stamp(inplace):
    """A decoder frame (RGB view of an RGBX buffer) is stamped through its
    buffer, whole pixels at a time, with the pixels a plain frame gets."""
    rng = np.random.default_rng(0)
    rgbx = rng.integers(0, 256, (180, 320, 4), dtype=np.uint8)
    view, plain, before = rgbx[..., :3], np.ascontiguousarray(rgbx[..., :3]), rgbx.copy()
    out = stamp(view, 12.5, inplace=inplace)
    np.testing.assert_array_equal(out, stamp(plain, 12.5))
    if inplace:
        assert out is view  # drawn through the buffer
    else:
        np.testing.assert_array_equal(rgbx, before)
