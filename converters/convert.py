"""HF safetensors <-> tempura-jax Orbax checkpoints, streamed a layer at a time.

Both directions write into a temporary sibling of the output directory and
rename it into place only when everything succeeded, so a failure leaves
nothing half-written. Tensors keep their dtype and bytes unless `--dtype`
asks for a cast, so HF -> Orbax -> HF is exact.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tempura_jax import checkpoint
from tempura_jax.config import from_hf_json
from tempura_jax.io.hf_checkpoint import HFCheckpoint, write_hf_weights
from tempura_jax.io.safetensors import FLOAT_DTYPES
from tempura_jax.loading import hf_source, load_pretrained, orbax_source
from tempura_jax.params import param_table

# Files a model directory may carry besides weights; copied through both ways.
HF_SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
)
SIDE_DIR = "hf_files"
DEFAULT_SHARD_BYTES = 5 * 10**9
EMBED = "model.embed_tokens.weight"


class ConvertError(ValueError):
    pass


@contextlib.contextmanager
def atomic_output(out: Path, overwrite: bool, source: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block succeeds."""
    if out == source or out in source.parents:
        raise ConvertError(f"{out}: output would replace the input {source}")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConvertError(
            f"{out}: output exists and is not empty (pass --overwrite to replace it)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only
    if out.exists():  # move the old output aside, put the new one in place, then delete
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(aside / "old")
        tmp.rename(out)
        shutil.rmtree(aside)
    else:
        tmp.rename(out)


def copy_side_files(src: Path | None, dst: Path) -> list[str]:
    if src is None or not src.is_dir():
        return []
    copied = [n for n in HF_SIDE_FILES if (src / n).is_file()]
    if copied:
        dst.mkdir(parents=True, exist_ok=True)
        for n in copied:
            shutil.copy2(src / n, dst / n)
    return copied


def to_orbax(
    hf_dir: str | Path, out: str | Path, *, overwrite: bool = False, compress: bool = False
) -> Path:
    """HF directory -> checkpoint step directory (params/, config.json, record, side files)."""
    hf_dir, out = Path(hf_dir).absolute(), Path(out).absolute()  # Orbax needs absolute paths
    cfg = from_hf_json(hf_dir)
    ckpt = HFCheckpoint(hf_dir)
    source_tensors = [{"name": n, "dtype": str(ckpt.spec(n)[0])} for n in sorted(ckpt.names())]
    tied_head = cfg.text.tie_word_embeddings and "lm_head.weight" in ckpt.names()
    tensors = hf_source(ckpt, cfg)  # validates every header before anything is written
    with atomic_output(out, overwrite, hf_dir) as tmp:
        groups = (
            {checkpoint.key_of(s.path): a for s, a in members}
            for _, members in itertools.groupby(
                tensors, key=lambda sa: checkpoint.group_of(sa[0].path)
            )
        )
        checkpoint.save_params_streaming(tmp / checkpoint.PARAMS, groups, compress=compress)
        shutil.copy2(hf_dir / "config.json", tmp / checkpoint.CONFIG)
        side = copy_side_files(hf_dir, tmp / SIDE_DIR)
        checkpoint.write_record(
            tmp,
            {
                "format_version": 1,
                "kind": "converted",
                "source": str(hf_dir.resolve()),
                "hf_tensors": source_tensors,
                "tied_head_in_source": tied_head,
                "hf_files_dir": SIDE_DIR if side else None,
            },
        )
    return out


def _side_files_dir(params: checkpoint.OrbaxParams) -> Path | None:
    """Converted checkpoints carry the files; training runs record where they were."""
    for key in ("hf_files_dir", "tokenizer_dir"):
        if params.record.get(key):
            return params.record_path.parent / params.record[key]  # absolute stays absolute
    return None


def to_hf(
    ckpt_dir: str | Path,
    out: str | Path,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    merge_adapters: bool = False,
) -> Path:
    """Checkpoint (converted or a training run, whose optimizer state is ignored) -> HF dir.
    An adapter run needs `merge_adapters`: its base with the adapters folded in."""
    ckpt_dir, out = Path(ckpt_dir).absolute(), Path(out).absolute()
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ConvertError(f"--dtype must be one of {sorted(FLOAT_DTYPES)}, got {dtype!r}")
    params = checkpoint.OrbaxParams(ckpt_dir)
    cfg = from_hf_json(params.config_path)
    target = FLOAT_DTYPES.get(dtype)
    if "peft" in params.record:
        if not merge_adapters:
            raise ConvertError(
                f"{ckpt_dir}: an adapter run holds only its adapters; pass --merge-adapters "
                "for a full HF checkpoint, or use to-peft for a PEFT adapter"
            )
        tensors = merged_source(ckpt_dir)
        stored = {s.path: np.dtype(np.float32) for s in param_table(cfg)}
    else:
        tensors = orbax_source(params, cfg)  # validates names, shapes and dtypes first
        stored = {s.path: params.specs[checkpoint.key_of(s.path)][0] for s in param_table(cfg)}
    # A tied model whose source also stored lm_head gets the copy back, right
    # after the embedding so nothing is held in memory for it.
    copy_head = bool(params.record.get("tied_head_in_source"))
    infos = []
    for spec in param_table(cfg):
        dt = target or stored[spec.path]
        infos.append((spec.hf_name, dt, spec.hf_shape))
        if copy_head and spec.hf_name == EMBED:
            infos.append(("lm_head.weight", dt, spec.hf_shape))

    def arrays() -> Iterator[np.ndarray]:
        for spec, value in tensors:
            hf = spec.to_hf(value).astype(target or value.dtype, copy=False)
            yield hf
            if copy_head and spec.hf_name == EMBED:
                yield hf

    with atomic_output(out, overwrite, ckpt_dir) as tmp:
        write_hf_weights(tmp, infos, arrays(), max_shard_bytes)
        config = json.loads(params.config_path.read_text())
        if target is not None:  # 4.x reads torch_dtype, 5.x dtype
            config["torch_dtype"] = dtype
            if "dtype" in config:
                config["dtype"] = dtype
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        copy_side_files(_side_files_dir(params), tmp)
        if not (tmp / "generation_config.json").exists():
            gen = {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return out


def merged_source(run: Path):
    """(spec, Flax-layout array) of an adapter run with its adapters merged (float32)."""
    model = load_pretrained(run, merge_adapters=True)
    for spec in param_table(model.config):
        node = model
        for key in spec.path:
            node = node[key] if isinstance(key, int) else getattr(node, key)
        yield spec, np.asarray(node[...], np.float32)


def to_peft(run: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """An adapter run (a step or its checkpoint root) -> a Hugging Face PEFT adapter directory."""
    from tempura_jax.peft import hf_format
    from tempura_jax.peft.config import from_record

    run, out = Path(run).absolute(), Path(out).absolute()
    params = checkpoint.OrbaxParams(run)
    rec = params.record.get("peft")
    if rec is None:
        raise ConvertError(f"{run}: not an adapter run (its record has no peft entry)")
    peft_cfg, _ = from_record(rec["config"])
    model = load_pretrained(run)
    base = Path(rec["base"]["path"])
    # PEFT loads onto an HF model: name the base when it is one (not a checkpoint).
    base_model = None if checkpoint.is_checkpoint(base) else str(base)
    with atomic_output(out, overwrite, run) as tmp:
        hf_format.export(
            model, peft_cfg, tmp, base_model=base_model, with_merger=peft_cfg.trains_merger
        )
    return out
