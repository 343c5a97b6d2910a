"""Multi-process data-parallel training under `torchrun`: process group, rank queries, collectives, SyncBatchNorm.

`torchrun --nproc-per-node N -m sibrar.cli train cfg.yaml --out DIR` starts N copies of the command;
torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT) is all this module reads.
Backend: NCCL when the run's device is CUDA (each process on GPU LOCAL_RANK), gloo otherwise.
Every helper is the identity (or a plain call) in a single process, so single-process training
runs the exact code it always did.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch import distributed as dist

from sibrar.errors import TrainingError

T = TypeVar("T")
_ACCELERATORS = ("cuda", "hpu", "xpu")  # where torch's own SyncBatchNorm kernels run


def launched() -> bool:
    """True in a process started by torchrun with more than one worker."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the one process that validates, evaluates, writes files, logs and runs callbacks."""
    return rank() == 0


def local_device(device: str | torch.device) -> torch.device:
    """The device of this process: under torchrun a CUDA device means GPU LOCAL_RANK (an index given is ignored)."""
    device = torch.device(device)
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextmanager
def process_group(device: str | torch.device) -> Iterator[None]:
    """Join torchrun's process group for the duration of the block; a no-op in a single process
    or when the caller has already initialised one (then the caller also destroys it)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if not dist.is_available():
        raise TrainingError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for several processes, but this torch "
                            "build has no torch.distributed; run without torchrun")
    device = torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        if device.type == "cuda":
            if local >= torch.cuda.device_count():
                raise TrainingError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s) are "
                                    "visible; start at most that many processes per node (torchrun --nproc-per-node)")
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            dist.init_process_group("gloo")
    except ValueError as exc:  # env:// without MASTER_ADDR etc.
        raise TrainingError(f"cannot join the process group ({exc}); launch several processes with torchrun, "
                            "e.g. torchrun --standalone --nproc-per-node 2 -m sibrar.cli train ...") from exc
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fetching or caching data), the other ranks after it."""
    if not is_main():
        barrier()
        yield
        return
    try:
        yield
    finally:
        barrier()  # also on error: the others then run the block and meet the same error themselves


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` on every rank (pickled; for small control data, not tensors in bulk)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def run_on_main(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 only; every rank gets its result. If it raises, rank 0 re-raises and the
    other ranks raise TrainingError naming it, so no rank is left waiting in a collective."""
    if not is_distributed():
        return fn()
    if is_main():
        try:
            result = fn()
        except BaseException as exc:
            broadcast_object((None, f"{type(exc).__name__}: {exc}"))
            raise
        broadcast_object((result, None))
        return result
    result, failure = broadcast_object((None, None))
    if failure is not None:
        raise TrainingError(f"rank 0 failed: {failure}")
    return result


def shard(order: Tensor, rank: int, world: int) -> Tensor:
    """This rank's rows of a permutation shared by all ranks: every world-th row from `rank` on, after
    dropping the last len % world rows, so every rank gets exactly len // world rows (equal batch
    counts: the collectives of every step always meet)."""
    n_local = len(order) // world
    if n_local == 0:
        raise TrainingError(f"{len(order)} training interactions cannot be shared by {world} processes")
    return order[: n_local * world][rank::world]


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's module (as DDP does at construction)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Replace every gradient by its mean over ranks, in one all-reduce per dtype.

    A parameter that got no gradient on some rank contributes zeros there; one that got none on any
    rank keeps `grad=None` (so AdamW skips it exactly as in a single process). With equal local
    batch sizes this gives every rank the gradient of the mean loss over the global batch.
    """
    world = world_size()
    if world == 1:
        return
    groups: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in params:  # parameter order, hence group order, is the same on every rank
        groups.setdefault(p.dtype, []).append(p)
    for group in groups.values():
        used = torch.tensor([p.grad is not None for p in group], dtype=group[0].dtype, device=group[0].device)
        flat = torch.cat([used, *((p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group)])
        dist.all_reduce(flat)
        offset = len(group)
        for p, any_rank in zip(group, (flat[: len(group)] > 0).tolist(), strict=True):
            mean = flat[offset: offset + p.numel()].view_as(p).div_(world)
            offset += p.numel()
            if not any_rank:
                p.grad = None
            elif p.grad is None:
                p.grad = mean
            else:
                p.grad.copy_(mean)


def all_reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Per-key sums over ranks (keys sorted, so every rank reduces the same vector)."""
    if not is_distributed():
        return values
    keys = sorted(values)
    total = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    summed = dict(zip(keys, total.tolist(), strict=True))
    return {k: summed[k] for k in values}


# ------------------------------------------------------------------------------ SyncBatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks (each rank's input feeds every rank's loss)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class SyncBatchNorm(nn.SyncBatchNorm):
    """torch's SyncBatchNorm, plus a CPU path for gloo.

    torch's SyncBatchNorm raises on CPU tensors (its kernels, `batch_norm_stats` and friends, are
    GPU-only, torch 2.14 included), so on CPU the batch statistics are reduced here with a
    differentiable all-reduce: sum and count, then the summed squared deviations (two passes,
    numerically like BatchNorm). Its backward all-reduces the
    gradient of the statistics, which, with gradients then averaged over ranks, is the exact
    gradient of the mean loss over the global batch (the same algebra as torch's CUDA kernel).
    Running mean/var are updated from the global statistics (unbiased variance), so they are equal
    on every rank. Like every SyncBatchNorm it needs each rank to call the layer the same number of
    times per step.
    """

    def forward(self, input: Tensor) -> Tensor:
        if input.device.type in _ACCELERATORS or not (self.training and is_distributed()):
            return super().forward(input)
        return self._cpu_sync_forward(input)

    def _cpu_sync_forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        self._check_non_zero_input_channels(x)
        group = self.process_group or dist.group.WORLD
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, c) + (1,) * (x.dim() - 2)
        count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
        total = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), group)  # (C + 1,)
        n = float(total[c].detach())
        if n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got {n:.0f} over all ranks")
        mean = total[:c] / n  # (C,)
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims), group) / n  # (C,) biased, for normalising
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        if self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach() * (n / (n - 1)), alpha=momentum)
        return out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm*d in `module` replaced, in place, by `SyncBatchNorm` sharing its parameters and
    buffers (state-dict keys unchanged, so checkpoints load into the plain model); returns `module`,
    or the new layer when `module` itself is a BatchNorm."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, bias=module.bias is not None)
        out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child))
    return out
