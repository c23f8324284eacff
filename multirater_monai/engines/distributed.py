"""Ending a distributed run (``multi_gpu_train.json``'s ``finalize``) without a crash at interpreter exit."""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["end_process_group"]


def end_process_group() -> None:
    """Wait for every rank, then destroy the default process group; nothing when none is initialised.

    Why the barrier: a Gloo worker thread releases the tensors of a finished collective (the last
    validation metric's all-gather) after the waiting rank has already moved on. Since PyTorch ties a
    tensor's release to its Python object, that thread needs the GIL. A rank with nothing left to do (any
    rank but 0, which still saves the model) could reach interpreter shutdown first; the thread then asks for
    the GIL during finalisation, Python ends the thread by unwinding it through a ``noexcept`` destructor
    and the process aborts ("terminate called without an active exception", exit code -6) after a
    successful training. Waiting in the barrier releases the GIL until the slowest rank arrives, so the
    worker threads finish their releases while Python is still alive.
    """
    if not dist.is_available() or not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
