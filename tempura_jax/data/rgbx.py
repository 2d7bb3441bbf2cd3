"""Decoded frames as RGB views of RGBX buffers.

The video reader hands over (H, W, 3) frames that are the first three
channels of (H, W, 4) buffers: PIL keeps RGB pixels in four bytes, so it can
resize such a frame in place (processor), and whole-pixel writes stay
contiguous (stamp). Everything else sees an ordinary RGB array.
"""

from __future__ import annotations

import numpy as np


def rgbx_base(frame: np.ndarray) -> np.ndarray | None:
    """The (H, W, 4) uint8 buffer whose first three channels `frame` is, or None."""
    base = frame.base
    if (
        isinstance(base, np.ndarray)
        and base.dtype == np.uint8
        and base.shape == (*frame.shape[:2], 4)
        and base.flags.c_contiguous
        and frame.strides == base.strides[:2] + (1,)
        and frame.__array_interface__["data"][0] == base.__array_interface__["data"][0]
    ):
        return base
    return None
