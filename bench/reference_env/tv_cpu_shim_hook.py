"""Imports tv_cpu_shim right before the first `import torchvision`."""

import importlib.abc
import sys


class _TVShimFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            import tv_cpu_shim  # noqa: F401
        return None


sys.meta_path.insert(0, _TVShimFinder())
