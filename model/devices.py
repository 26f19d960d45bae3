"""Moving tensors from the host to the device the model is on."""

from __future__ import annotations

import torch


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (a CPU tensor) on ``device``, without making the host wait.

    A copy to a CUDA device from ordinary (pageable) memory waits until every kernel
    already queued has run, so each one in a training step stops the host from queueing
    the next step's work while the GPU runs this one. From pinned memory with
    ``non_blocking`` the host goes on at once; PyTorch's caching host allocator keeps the
    pinned copy alive until the transfer is done, and nothing writes to it after."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
