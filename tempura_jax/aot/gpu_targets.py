"""NVIDIA GPUs for the CUDA plugin's deviceless compile path: XLA's
`GpuTargetConfig` (text proto) describes the device it would otherwise query.

Needs the CUDA plugin (`pip install -e ".[aot-gpu]"`, 4.4 GB, no driver or GPU
needed; set JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 where there is no driver).
Numbers are the vendor's specifications of the SXM parts.
"""

from __future__ import annotations

import os
from typing import Any

# Hopper SXM (sm_90): 132 SMs, 228 KiB shared memory per SM (227 KiB per block
# opt-in), 64 Ki registers per SM.
_HOPPER: dict[str, Any] = {
    "threads_per_block_limit": 1024,
    "threads_per_warp": 32,
    "shared_memory_per_block": 48 * 1024,
    "shared_memory_per_core": 228 * 1024,
    "threads_per_core_limit": 2048,
    "core_count": 132,
    "fpus_per_core": 128,
    "block_dim_limit_x": 2**31 - 1,
    "block_dim_limit_y": 65535,
    "block_dim_limit_z": 65535,
    "clock_rate_ghz": 1.98,
    "shared_memory_per_block_optin": 227 * 1024,
    "registers_per_core_limit": 65536,
    "registers_per_block_limit": 65536,
}

GPUS: dict[str, dict[str, Any]] = {
    "h100": {
        **_HOPPER,
        "memory_bandwidth": 3_352_320_000_000,
        "l2_cache_size": 50 * 2**20,
        "device_memory_size": 79 * 2**30 + 112 * 2**20,
        "name": "NVIDIA H100 80GB HBM3",
    },
    "h200": {
        **_HOPPER,
        "memory_bandwidth": 4_800_000_000_000,
        "l2_cache_size": 50 * 2**20,
        "device_memory_size": 140 * 2**30 + 384 * 2**20,
        "name": "NVIDIA H200",
    },
}


def _versions() -> tuple[tuple[int, int], tuple[int, int]]:
    """(cuDNN, CUDA runtime) versions of the installed plugin's wheels."""
    from importlib.metadata import PackageNotFoundError, version

    def major_minor(*dists: str, default: tuple[int, int]) -> tuple[int, int]:
        for d in dists:
            try:
                parts = version(d).split(".")
                return int(parts[0]), int(parts[1])
            except PackageNotFoundError:
                continue
        return default

    cudnn = major_minor("nvidia-cudnn-cu13", "nvidia-cudnn-cu12", default=(9, 8))
    cuda = major_minor("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12", default=(12, 8))
    return cudnn, cuda


def target_config(gpu: str) -> str:
    """The text proto of `xla.GpuTargetConfigProto` for a known GPU."""
    spec = dict(GPUS[gpu])
    name = spec.pop("name")
    (dnn_major, dnn_minor), (rt_major, rt_minor) = _versions()
    fields = "\n".join(f"  {k}: {v}" for k, v in spec.items())
    return (
        f"gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: 9 minor: 0 }}\n}}\n"
        f'platform_name: "CUDA"\n'
        f"dnn_version_info {{ major: {dnn_major} minor: {dnn_minor} }}\n"
        f"runtime_version {{ major: {rt_major} minor: {rt_minor} }}\n"
        f'device_description_str: "{name}"\n'
    )


def topology_desc(t):
    """Compile-only CUDA devices for a `topologies.Target` (platform gpu)."""
    from jax.experimental import topologies

    from tempura_jax.aot.topologies import TopologyError

    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    try:
        return topologies.get_topology_desc(
            platform="cuda", topology=t.topology, target_config=target_config(t.gpu)
        )
    except Exception as e:  # no plugin, or it refuses the config
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TopologyError(
            f"{t.name}: cannot get CUDA devices ({first}); "
            'install the CUDA plugin: pip install -e ".[aot-gpu]"'
        ) from e
