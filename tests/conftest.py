"""Shared fixtures: tiny HF reference models built with transformers' own
classes (torch, CPU, fp32), saved with `save_pretrained` once per session."""

import os

# Eight host devices for the sharded tests; must precede the first jax import.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# libtpu (installed for the AOT compile tests) must not probe for TPUs or take
# its machine-wide lock: tests run on CPU; TPU topologies still compile.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _share_compiles() -> None:
    """One XLA compilation cache for the session, inherited by every process a
    test starts: the trainer runs that a resume test starts two or three
    times, and tests that build the same tiny step, compile it once (compiles
    are most of the suite's time). Keys are the programs and flags, so a hit is
    the same executable; a fresh folder per session, removed at its end."""
    import atexit
    import shutil
    import tempfile

    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # set by the caller, or inherited from the session that made it
    folder = tempfile.mkdtemp(prefix="tempura-jax-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


_share_compiles()


def shared_compiles() -> dict[str, str]:
    """The cache settings above, for a test that starts a process with an
    environment of its own."""
    return {k: v for k, v in os.environ.items() if k.startswith(CACHE_VARS)}


CACHE_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

VOCAB = 300
IMAGE, VIDEO, VSTART, VEND = 290, 291, 292, 293

HF_VARIANTS = {
    # GQA (4 query heads, 2 KV heads), tied head, 112-px windows (4x4 merged tokens).
    "tied": dict(heads=4, kv_heads=2, tie=True, fullatt=[1, 3]),
    # MQA-style GQA (4 / 1), untied head, different full-attention blocks.
    "untied": dict(heads=4, kv_heads=1, tie=False, fullatt=[0, 2]),
}


def hf_config(variant: str):
    from transformers import Qwen2_5_VLConfig

    v = HF_VARIANTS[variant]
    return Qwen2_5_VLConfig(
        vision_config=dict(
            depth=4,
            hidden_size=32,
            intermediate_size=48,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=v["fullatt"],
            tokens_per_second=2,
            window_size=112,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            in_channels=3,
        ),
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=v["heads"],
            num_key_value_heads=v["kv_heads"],
            rms_norm_eps=1e-6,
            rope_theta=1e6,
            max_position_embeddings=4096,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            tie_word_embeddings=v["tie"],
        ),
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
        tie_word_embeddings=v["tie"],
    )


def randomize_(model, seed: int = 0) -> None:
    """Replace HF's init (unit norms, zero biases) so every tensor matters."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm" in name.split(".")[-2] or "ln_q" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) * fan_in**-0.5)


def build_hf_model(variant: str, seed: int = 0):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hf_config(variant)).eval()
    randomize_(model, seed)
    return model


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory):
    """variant -> (torch model with eager attention, saved directory)."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            from transformers import Qwen2_5_VLForConditionalGeneration

            path = tmp_path_factory.mktemp(f"hf_{variant}")
            build_hf_model(variant).save_pretrained(path)
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                path, attn_implementation="eager"
            ).eval()
            cache[variant] = (model, path)
        return cache[variant]

    return get


def vision_block(grid, token=IMAGE, merge=2):
    t, h, w = grid
    return [VSTART] + [token] * (t * h * w // merge**2) + [VEND]


def pixels(grid_rows, seed=0):
    n = int(sum(np.prod(g) for g in grid_rows))
    return np.random.default_rng(seed).standard_normal((n, 1176)).astype(np.float32)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small demo data set (4 short videos, one also as a frame folder)."""
    from tempura_jax.data.demo import DemoSpec, make_demo_data

    out = tmp_path_factory.mktemp("demo")
    return make_demo_data(
        out, DemoSpec(num_videos=4, min_seconds=10, max_seconds=16, frame_folders=1)
    )


def demo_data_config(demo, **kw):
    """A DataConfig over the demo set with a small pixel budget (56x84 frames)."""
    from tempura_jax.data.config import DataConfig
    from tempura_jax.data.processor import PixelConfig

    base = dict(
        data=(demo["stage2"],),
        media_root=demo["media_root"],
        tokenizer=demo["tokenizer"],
        pixels=PixelConfig(min_pixels=112 * 56, max_pixels=112 * 56),
        max_seq_len=1024,
        batch_size=2,
        seed=0,
    )
    return DataConfig(**{**base, **kw})


def qvh_one_query(folder):
    """A QVHighlights annotation file with one 9 s query (a duration that is not a
    multiple of 2): clips 1 and 2 relevant, window [2, 6]."""
    import json
    from pathlib import Path

    gt = {
        "qid": 7, "query": "a dog", "duration": 9, "vid": "vid_a",
        "relevant_clip_ids": [1, 2], "saliency_scores": [[4, 4, 4], [2, 3, 4]],
        "relevant_windows": [[2, 6]],
    }  # fmt: skip
    path = Path(folder) / "highlight_val_release.jsonl"
    path.write_text(json.dumps(gt) + "\n")
    return path


def start_http_module(module: str, args: list[str], timeout: float = 240):
    """Start `python -m MODULE ARGS` (a server of ours that binds a free port
    and prints its http:// address); returns (process, that line). The
    output pipe stays drained; the caller terminates the process."""
    import subprocess
    import sys
    import threading
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line: list[str] = []

    def first_url() -> None:  # the line that names the address (logs may come first)
        for text in proc.stdout:
            if "http://" in text:
                line.append(text)
                return

    reader = threading.Thread(target=first_url, daemon=True)
    reader.start()
    reader.join(timeout)
    if not line:
        proc.kill()
        raise RuntimeError(f"{module} did not start: {proc.stdout.read()[-2000:]}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    return proc, line[0]
