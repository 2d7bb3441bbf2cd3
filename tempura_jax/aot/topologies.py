"""Known compile targets: a slice or machine name -> how to get its devices
without the hardware, and each chip's HBM.

TPU slices come from libtpu's compile-only client
(`jax.experimental.topologies.get_topology_desc`); GPUs from the CUDA
plugin's deviceless path with a `GpuTargetConfig` text proto
(`gpu_targets.py`). HBM is the vendor's nominal per-device capacity; the
chips' peak FLOP/s live in `train.flops.PEAK_FLOPS` (one table).
"""

from __future__ import annotations

import dataclasses
import os

import jax

GIB = 2**30


class TopologyError(ValueError):
    """A target this machine cannot compile for (unknown name, missing plugin)."""


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # what --topology takes, e.g. "v5e-8", "h100-8"
    platform: str  # "tpu" or "gpu"
    topology: str  # get_topology_desc's name: "v5e:2x4", or "1x1x8" GPUs per host
    devices: int
    hbm_bytes: int  # per device
    gpu: str | None = None  # gpu_targets.TARGETS key


def _tpu(name: str, topology: str, devices: int, hbm_gib: float) -> Target:
    return Target(name, "tpu", topology, devices, int(hbm_gib * GIB))


def _gpu(name: str, gpu: str, devices: int, hbm_gib: float) -> Target:
    return Target(name, "gpu", f"1x1x{devices}", devices, int(hbm_gib * GIB), gpu)


# v4's compile-only client gives one device per TensorCore (two per chip, each
# with half the chip's 32 GiB); v5p devices are megacore chips.
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        _tpu("v4-8", "v4:2x2x1", 8, 16),
        _tpu("v5e-4", "v5e:2x2", 4, 16),
        _tpu("v5e-8", "v5e:2x4", 8, 16),
        _tpu("v5e-16", "v5e:4x4", 16, 16),
        _tpu("v5p-8", "v5p:2x2x1", 4, 95),
        _tpu("v5p-16", "v5p:2x2x2", 8, 95),
        _tpu("v5p-64", "v5p:4x4x2", 32, 95),
        _tpu("v6e-4", "v6e:2x2", 4, 32),
        _tpu("v6e-8", "v6e:2x4", 8, 32),
        _tpu("v6e-16", "v6e:4x4", 16, 32),
        _gpu("h100-1", "h100", 1, 80),
        _gpu("h100-8", "h100", 8, 80),
        _gpu("h200-8", "h200", 8, 141),
    )
}


def target(name: str) -> Target:
    """`name` is a table key or a raw TPU topology such as "v5e:2x2"."""
    if name in TARGETS:
        return TARGETS[name]
    for t in TARGETS.values():
        if t.platform == "tpu" and t.topology == name:
            return t
    raise TopologyError(f"unknown topology {name!r}; known: {', '.join(TARGETS)}")


def devices(t: Target) -> list[jax.Device]:
    """The target's devices (compile-only: they lower and compile, never run)."""
    from jax.experimental import topologies

    if t.platform == "tpu":
        # libtpu takes a machine-wide lock on load; a compile-only client needs
        # none, and other jax processes on this machine may hold it.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        try:
            desc = topologies.get_topology_desc(topology_name=t.topology, platform="tpu")
        except Exception as e:  # libtpu missing or refusing the topology
            raise TopologyError(
                f"{t.name}: cannot get TPU topology {t.topology} ({_first_line(e)}); "
                'install libtpu: pip install "jax[tpu]"'
            ) from e
    else:
        from tempura_jax.aot.gpu_targets import topology_desc

        desc = topology_desc(t)
    found = list(desc.devices)
    if len(found) != t.devices:
        raise TopologyError(
            f"{t.name}: expected {t.devices} devices, {t.topology} has {len(found)}"
        )
    return found


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
