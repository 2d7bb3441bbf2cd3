"""lmms-eval integration: `lmms-eval --model tempura_jax` and TEMPURA's own tasks.

`model.TempuraJax` is the lmms-eval model (registered through the
`lmms_eval.models` entry point, see `manifest`); `tasks/` is a task folder for
`--include_path` (Charades-STA, QVHighlights, dense captioning) scored by
`tempura_jax.eval`; `task_folder.write_task_folder` points its task files at
local annotation files. Needs the `[lmms]` extra (lmms-eval and its stack).
"""

from __future__ import annotations


def manifest():
    """The entry point's payload: lmms-eval's ModelManifest for `--model tempura_jax`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="tempura_jax", simple_class_path="tempura_jax.lmms.model.TempuraJax"
    )
