"""Ahead-of-time compiles of the training step and the serving programs for
TPU slices (libtpu's compile-only client) and NVIDIA GPUs (the deviceless
CUDA plugin) on a machine without either: memory, fit and FLOPs per device."""
