"""Video and frame-folder reading: container times (VFR), sampling policies,
clips, and a clear error for every kind of unreadable media."""

import numpy as np
import pytest
from PIL import Image

from tempura_jax.data import media
from tempura_jax.data.media import MediaError, Sampling
from tempura_jax.data.video_io import write_video


def coded_frames(n, h=64, w=96):
    """Frame i is a flat grey of 8 * i: its index survives lossy coding."""
    return [np.full((h, w, 3), min(8 * i, 255), np.uint8) for i in range(n)]


def frame_index(frame):
    return int(round(frame.mean() / 8))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".avi"])
def test_containers_cfr(tmp_path, suffix):
    path = tmp_path / f"v{suffix}"
    write_video(path, coded_frames(30), fps=10)
    tl = media.timeline(path)
    np.testing.assert_allclose(tl.times, np.arange(30) / 10, atol=1e-6)
    assert (tl.width, tl.height) == (96, 64)
    assert tl.duration == pytest.approx(3.0)
    clip = media.read_clip(path)  # 1 FPS
    np.testing.assert_allclose(clip.times, [0, 1, 2], atol=1e-6)
    assert [frame_index(f) for f in clip.frames] == [0, 10, 20]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_vfr_times_match_container(tmp_path, suffix):
    import av

    times = [0, 0.1, 0.5, 0.55, 1.7, 2.0, 2.05, 3.3, 3.9, 4.2]
    path = tmp_path / f"vfr{suffix}"
    write_video(path, coded_frames(len(times)), times=times)
    with av.open(str(path)) as c:  # the container's own presentation times
        s = c.streams.video[0]
        container_times = sorted(float(f.time) for f in c.decode(s))
    tl = media.timeline(path)
    np.testing.assert_allclose(tl.times, np.array(container_times) - container_times[0], atol=1e-9)
    np.testing.assert_allclose(tl.times, times, atol=1e-3)
    # At 1 FPS each target second takes the frame on screen then.
    # Each 1 FPS tick takes the frame on screen then; the frame keeps its own
    # container time and stands for its tick (what is stamped and masked).
    clip = media.read_clip(path, Sampling(fps=1.0))
    np.testing.assert_allclose(clip.frame_times, [0, 0.55, 2.0, 2.05, 3.9], atol=1e-3)
    np.testing.assert_allclose(clip.times, [0, 1, 2, 3, 4])
    assert [frame_index(f) for f in clip.frames] == [0, 3, 5, 6, 8]


def test_uniform_and_max_frames(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, coded_frames(30), fps=10)
    clip = media.read_clip(path, Sampling(num_frames=4))
    assert [frame_index(f) for f in clip.frames] == [0, 10, 19, 29]  # linspace(0, 29, 4)
    tl = media.timeline(path)
    picks = media.select(tl.times, tl.duration, Sampling(fps=10, max_frames=5))
    assert picks.idx.tolist() == [0, 7, 14, 22, 29]  # spread over the whole video
    np.testing.assert_allclose(picks.times, [0, 0.7, 1.4, 2.2, 2.9])
    picks = media.select(tl.times, tl.duration, Sampling(fps=10, max_frames=5, too_long="head"))
    assert picks.idx.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(MediaError, match="max_frames"):
        media.select(tl.times, tl.duration, Sampling(fps=10, max_frames=5, too_long="error"))


def test_clip_is_a_video_of_its_own(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, coded_frames(30), fps=10)
    clip = media.read_clip(path, Sampling(fps=2.0), clip=(1.05, 2.6))
    # The frame on screen at 1.05 s (index 10) is the clip's time 0.
    assert [frame_index(f) for f in clip.frames] == [10, 15, 20, 25]
    np.testing.assert_allclose(clip.times, [0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(clip.frame_times, [0, 0.45, 0.95, 1.45], atol=1e-6)
    assert clip.duration == pytest.approx(1.55)


def test_frame_folder_numeric_order(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (0, 1, 2, 9, 10, 11):
        Image.fromarray(coded_frames(12)[i]).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("ignored")
    tl = media.timeline(folder, sampling=Sampling(folder_fps=1.0))
    np.testing.assert_allclose(tl.times, [0, 1, 2, 9, 10, 11])
    clip = media.read_clip(folder, Sampling(fps=0.5))
    # Targets 0, 2, ..., 10 s: 4, 6 and 8 s still show frame 2; repeats collapse.
    assert [frame_index(f) for f in clip.frames] == [0, 2, 10]
    assert len(clip.times) == len(set(clip.times))


def bad_media(tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, coded_frames(40), fps=10)
    data = good.read_bytes()
    cases = {}
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty.mp4"] = "empty file"
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    cases["corrupt.mp4"] = "cannot open|corrupt"
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    cases["truncated.mp4"] = "cannot open|corrupt|truncated"
    cases["missing.mp4"] = "not found"
    cases["missing_folder"] = "not found"
    (tmp_path / "no_frames").mkdir()
    cases["no_frames"] = "no <idx>.jpg"
    zero = tmp_path / "zero_frame"
    zero.mkdir()
    (zero / "0.jpg").write_bytes(b"")
    cases["zero_frame"] = "unreadable frame"
    return cases


def test_bad_media_errors_name_the_path(tmp_path):
    for name, pattern in bad_media(tmp_path).items():
        with pytest.raises(MediaError, match=pattern) as e:
            media.read_clip(tmp_path / name)
        assert name in str(e.value)


def test_skipping_nonreference_frames_is_exact(tmp_path):
    """Unsampled non-reference (B) frames are dropped by the decoder; every
    kept frame is bit-identical to a full decode."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (72, 128, 3), dtype=np.uint8)
    frames = [np.roll(base, 3 * i, axis=1) for i in range(60)]
    path = tmp_path / "b.mp4"
    write_video(path, frames, fps=12, crf=30)
    for sampling in (Sampling(fps=1.0), Sampling(fps=5.0), Sampling(num_frames=7)):
        fast = media.read_clip(path, sampling)
        full = media.read_clip(path, Sampling(**{**sampling.__dict__, "skip_nonref": False}))
        np.testing.assert_array_equal(fast.times, full.times)
        assert all(np.array_equal(a, b) for a, b in zip(fast.frames, full.frames, strict=True))


def decode_all(path):
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return {f.pts: f.to_ndarray(format="rgb24") for f in c.decode(s)}


def test_sparse_sampling_seeks_exactly(tmp_path):
    """Uniform picks far apart on a short-GOP video: the reader seeks to each
    pick's keyframe, and every frame equals a full sequential decode."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (72, 128, 3), dtype=np.uint8)
    path = tmp_path / "gop.mp4"
    write_video(path, [np.roll(base, 5 * i, axis=0) for i in range(120)], fps=12, gop=12)
    ref = decode_all(path)
    tl = media.timeline(path)
    assert len(tl.keyframes) >= 10
    for sampling in (Sampling(num_frames=4), Sampling(num_frames=9), Sampling(fps=0.3)):
        clip = media.read_clip(path, sampling)
        picks = media.select(tl.times, tl.duration, sampling)
        for frame, i in zip(clip.frames, picks.idx, strict=True):
            np.testing.assert_array_equal(frame, ref[int(tl.keys[i])])


def test_draining_before_a_seek_is_exact(tmp_path):
    """1 FPS on a 2 s GOP with B-frames (the benchmark's layout): every other
    pick is a keyframe, so the reader drains the decoder after each mid-GOP
    pick and seeks; every frame equals a full sequential decode."""
    rng = np.random.default_rng(2)
    base = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    path = tmp_path / "half_gop.mp4"
    write_video(path, [np.roll(base, 2 * i, axis=1) for i in range(12 * 9)], fps=12, gop=24)
    ref = decode_all(path)
    tl = media.timeline(path)
    clip = media.read_clip(path, Sampling(fps=1.0))
    picks = media.select(tl.times, tl.duration, Sampling(fps=1.0))
    assert len(clip) == 9 and len(tl.keyframes) == 5
    for frame, i in zip(clip.frames, picks.idx, strict=True):
        np.testing.assert_array_equal(frame, ref[int(tl.keys[i])])


def test_ntsc_ticks_mask_the_right_frames(tmp_path):
    """At 29.97 fps the frame on screen at each second has a time just below
    it; the frame stands for its tick, so masks and stamps use whole seconds."""
    from tempura_jax.data.sample import masked_frames

    path = tmp_path / "ntsc.mp4"
    write_video(path, coded_frames(30 * 12, 16, 16), fps=30000 / 1001)
    clip = media.read_clip(path, Sampling(fps=1.0))
    np.testing.assert_allclose(clip.times, np.arange(13))  # 360 frames last 12.012 s
    assert (clip.frame_times[1:] < clip.times[1:]).all()
    np.testing.assert_array_equal(
        np.nonzero(masked_frames(clip.times, [(5, 7)], 1.0))[0], [5, 6, 7]
    )


@pytest.mark.parametrize("width", [80, 146])
def test_decoded_frames_equal_an_rgb_decode(tmp_path, width):
    """`on_frame` gets the pixels of an RGB decode: as RGB views of RGBX
    buffers (read by the resize without a copy) where swscale's RGBX output is
    exact, as plain RGB where it is not (width 146 with FFmpeg 7 on x86 has
    garbage in its last RGBX columns). Frames kept without `on_frame` are
    compact RGB."""
    from tempura_jax.data.rgbx import rgbx_base

    rng = np.random.default_rng(3)
    path = tmp_path / "v.mp4"
    write_video(path, [rng.integers(0, 255, (48, width, 3), np.uint8) for _ in range(20)], 10)
    ref = decode_all(path)
    tl = media.timeline(path)
    seen = []
    clip = media.read_clip(path, on_frame=lambda k, f: seen.append(f) or f.copy())
    if width == 80:  # a multiple of 16: the fast path
        assert all(rgbx_base(f) is not None for f in seen)
    plain = media.read_clip(path)
    picks = media.select(tl.times, tl.duration, Sampling()).idx
    for a, b, i in zip(clip.frames, plain.frames, picks, strict=True):
        np.testing.assert_array_equal(a, ref[int(tl.keys[i])])
        np.testing.assert_array_equal(b, a)
        assert b.flags.c_contiguous and b.shape == (48, width, 3)


def test_a_frame_kind_that_cannot_be_checked_gets_plain_rgb():
    assert media._rgbx_exact(80, 48, "no_such_format", 2, 0) is False
