"""A training run's checkpoints: Orbax CheckpointManager over the layout of
`tempura_jax.checkpoint`, so every step directory is also a model checkpoint
that `load_pretrained` and `tempura-convert` read.

    <workdir>/checkpoints/config.json               HF config of the model
    <workdir>/checkpoints/tempura_checkpoint.json   where it came from, tokenizer dir
    <workdir>/checkpoints/<step>/params/            all parameters (trainable and frozen)
                                 opt_state/         optimiser state
                                 data/              each process's data-iterator state
                                 meta/              step, RNG key, counters, resolved config

Saves are asynchronous (the arrays are copied off the devices before `save`
returns, so the step may donate them); Orbax writes into a temporary
directory and renames it when complete, so a run killed mid-save resumes
from the last complete step.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from tempura_jax import checkpoint

DATA_ITEM, META_ITEM, OPT_ITEM = "data", "meta", "opt_state"


class DataStateHandler(ocp.CheckpointHandler):
    """Each process's data-iterator state as its own JSON file (the iterators
    of different processes read different rows)."""

    @staticmethod
    def _file(directory: epath.Path) -> epath.Path:
        return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: DataSave) -> None:
        self._file(directory).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: DataRestore | None = None) -> dict:
        path = self._file(directory)
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no data state for this process (was the run saved with "
                f"{jax.process_count()} processes?)"
            )
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path) -> None:
        return None

    def structure(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
    state: dict


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
    pass


def params_tree(*states: nnx.State) -> dict:
    """Nested dicts keyed by Flax path names ("layers"/"3"/...), as on disk."""
    return checkpoint.nest(
        (checkpoint.key_of(path), _value(v)) for st in states for path, v in nnx.to_flat_state(st)
    )


def _value(v: Any) -> Any:
    return v.get_value() if isinstance(v, nnx.Variable) else v


def fill_state(state: nnx.State, tree: dict) -> nnx.State:
    """A copy of `state` with values taken from a `params_tree`-shaped dict."""
    items = []
    for path, var in nnx.to_flat_state(state):
        node = tree
        for k in checkpoint.key_of(path):
            node = node[k]
        items.append((path, var.replace(node) if isinstance(var, nnx.Variable) else node))
    return nnx.from_flat_state(items)


class RunCheckpoints:
    def __init__(self, root: str | Path, *, keep: int, async_save: bool):
        self.root = Path(root).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(self.root, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def write_model_files(self, hf_config: dict, record: dict) -> None:
        """config.json and the record, written once by process 0, atomically."""
        if jax.process_index() != 0:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for name, content in ((checkpoint.CONFIG, hf_config), (checkpoint.RECORD, record)):
            tmp = self.root / f".{name}.tmp"
            tmp.write_text(json.dumps(content, indent=2, sort_keys=True))
            os.replace(tmp, self.root / name)

    def save(
        self,
        step: int,
        params: dict,
        opt_state: Any,
        data_state: dict,
        meta: dict,
        *,
        force: bool = False,
    ) -> bool:
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    checkpoint.PARAMS: ocp.args.StandardSave(params),
                    OPT_ITEM: ocp.args.StandardSave(opt_state),
                    DATA_ITEM: DataSave(data_state),
                    META_ITEM: ocp.args.JsonSave(meta),
                }
            ),
            force=force,
        )

    def restore(self, step: int, params_target: dict, opt_target: Any) -> dict[str, Any]:
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    checkpoint.PARAMS: ocp.args.StandardRestore(params_target),
                    OPT_ITEM: ocp.args.StandardRestore(opt_target),
                    DATA_ITEM: DataRestore(),
                    META_ITEM: ocp.args.JsonRestore(),
                }
            ),
        )
        return {k: out[k] for k in (checkpoint.PARAMS, OPT_ITEM, DATA_ITEM, META_ITEM)}

    def read_meta(self, step: int) -> dict:
        out = self.manager.restore(
            step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
        )
        return out[META_ITEM]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
