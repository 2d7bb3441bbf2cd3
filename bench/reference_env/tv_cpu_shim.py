"""Let PyPI's torchvision 0.28.0 (built against CUDA torch) import under CPU torch 2.13.0.

torchvision/_C.so needs libc10_cuda.so, so torchvision/extension.py skips it,
and torchvision/_meta_registrations.py then registers fakes for the never
defined ops torchvision::nms / torchvision::qnms, which raises on import. If
_C.so cannot load, define those two schemas (no kernels): the pure-torch parts
(transforms.functional.resize, which qwen-vl-utils uses) then work.
Activated by tv_cpu_shim_hook (via tv_cpu_shim.pth) just before `import torchvision`.
"""

import importlib.util
import os

import torch

_lib = None


def apply():
    global _lib
    if _lib is not None:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    so = os.path.join(list(spec.submodule_search_locations)[0], "_C.so")
    try:
        torch.ops.load_library(so)
        return  # the real extension loads (a CPU build): nothing to do
    except (OSError, ImportError):
        pass
    _lib = torch.library.Library("torchvision", "DEF")
    _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")


apply()
