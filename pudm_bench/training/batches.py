"""The training set on the device, the order of its batches (a pure function of seed and step, so resuming needs no
data-loader state), and the device and precision a run uses."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from pudm_bench.data.build import BuiltSplit
from pudm_bench.errors import ConfigError
from pudm_bench.training.losses import LABELED_NORMAL, LABELED_SENSITIVE, UNLABELED


@dataclass
class TrainingSet:
    """Every training image as one uint8 tensor (kept on the training device), each one's role and its condition
    (class or prompt of a conditional model; zeros when unconditional)."""

    images: torch.Tensor
    roles: torch.Tensor
    conditions: torch.Tensor
    prompt_ids: torch.Tensor  # text-to-image models: which of split.prompts each image is trained with

    @classmethod
    def from_split(cls, split: BuiltSplit, method: str) -> "TrainingSet":
        """U and S concatenated (the paper's set-up: batches mix them in proportion); N only for PNU.

        The unsupervised baseline keeps S in the batches with weight 0 (``losses.unsupervised_risk``), which is how
        the paper's experiments ran it; its model never learns from S.
        """
        parts = [(split.unlabeled, UNLABELED, split.unlabeled_conditions, split.unlabeled_prompt_ids),
                 (split.labeled_sensitive, LABELED_SENSITIVE, split.labeled_sensitive_conditions,
                  split.labeled_sensitive_prompt_ids)]
        if method == "pnu":
            if len(split.labeled_normal) == 0:
                raise ConfigError(
                    f"method 'pnu' needs labeled normal data but split {split.spec.name!r} has counts.labeled_normal=0; "
                    "add labeled_normal to the split's counts"
                )
            parts.append((split.labeled_normal, LABELED_NORMAL, split.labeled_normal_conditions, None))

        def column(values: list[torch.Tensor | None]) -> torch.Tensor:
            return torch.cat([torch.zeros(len(p[0]), dtype=torch.long) if v is None else v
                              for p, v in zip(parts, values)])

        images = torch.cat([p[0] for p in parts])
        roles = torch.cat([torch.full((len(p[0]),), p[1], dtype=torch.long) for p in parts])
        conditions = column([p[2] for p in parts])
        prompt_ids = column([p[3] if p[3] is not None else p[2] for p in parts])
        return cls(images, roles, conditions, prompt_ids)

    def __len__(self) -> int:
        return len(self.roles)


@functools.lru_cache(maxsize=2)
def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The example order of one epoch: a pure function of (seed, epoch), so resuming needs no data-loader state."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """This rank's share of the global batch for ``step`` (0-based): epochs drop their last partial batch."""
    per_epoch = num_examples // batch_size
    epoch, within = divmod(step, per_epoch)
    order = epoch_order(num_examples, seed, epoch)
    global_batch = order[within * batch_size:(within + 1) * batch_size]
    return global_batch[rank::world_size]


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 autocast on GPUs that support it (Ampere and newer: the range of fp32, no loss scaling needed), fp16
    with a GradScaler on older ones (the paper trained in fp16; ``precision=fp16`` keeps that choice anywhere);
    full precision on CPUs."""
    if precision == "auto":
        if device.type != "cuda":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision=fp16 needs a CUDA device; use --precision fp32 or bf16 on a CPU")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
