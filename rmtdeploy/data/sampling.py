"""Loaders whose every batch is a function of (seed, epoch, position): resumable and shardable.

A fine-tune interrupted mid-epoch must resume with the very batches, augmentations and order it would
have seen. So the order of an epoch is a permutation drawn from (seed, epoch), each rank of a
distributed run takes every ``world``-th position of it (as ``DistributedSampler`` does), a resumed epoch
starts at the position it stopped at, and each image's augmentation is drawn from its own seed (seed,
epoch, index) rather than from a worker's running RNG, so it does not depend on which worker made it or
on how many batches came before.

A file that breaks when decoded mid-epoch (checked files can still fail: a disk error, a file replaced)
is dropped from its batch and reported by index; the training loop counts it, never crashes on it.
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rmtdeploy.errors import RmtdeployError


class EpochSampler(Sampler):
    """Yields ``(index, sample_seed)`` for one rank's share of one epoch, from ``start`` on."""

    def __init__(self, length: int, *, seed: int, shuffle: bool, epoch: int = 0, start: int = 0,
                 rank: int = 0, world: int = 1):  # fmt: skip
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.epoch, self.start, self.rank, self.world = epoch, start, rank, world

    def positions(self) -> list[int]:
        """This rank's indices for the whole epoch (padded by wrapping so every rank gets as many)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        per_rank = -(-self.length // self.world)
        order += order[: per_rank * self.world - self.length]
        return order[self.rank :: self.world]

    def __iter__(self):
        for index in self.positions()[self.start :]:
            yield index, _mix(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return max(0, -(-self.length // self.world) - self.start)


class SeededItems(Dataset):
    """``dataset[index]`` drawn under its own seed; a broken item becomes ``(None, -1, index)``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                image, label = self.dataset[index]
        except (RmtdeployError, OSError, ValueError, SyntaxError):
            return None, -1, index
        finally:
            random.setstate(state)
        return image, label, index


def collate_skipping(items):
    """(images, labels, indices, skipped indices) of the items that loaded."""
    good = [item for item in items if item[0] is not None]
    skipped = torch.tensor([item[2] for item in items if item[0] is None], dtype=torch.long)
    if not good:
        return None, None, torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    return images, labels, indices, skipped


def epoch_loader(dataset: Dataset, *, batch_size: int, seed: int, shuffle: bool, epoch: int = 0,
                 start_batch: int = 0, rank: int = 0, world: int = 1, workers: int = 0) -> DataLoader:  # fmt: skip
    """A loader over one epoch of ``dataset`` for one rank, from batch ``start_batch`` on; batches are
    ``(images, labels, indices, skipped)`` (see :func:`collate_skipping`)."""
    sampler = EpochSampler(
        len(dataset), seed=seed, shuffle=shuffle, epoch=epoch, start=start_batch * batch_size,
        rank=rank, world=world,
    )  # fmt: skip
    return DataLoader(
        SeededItems(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping,
        persistent_workers=False,
    )


def _mix(*numbers: int) -> int:
    """A 63-bit seed from a tuple of integers (stable across processes, unlike ``hash``)."""
    value = 0x9E3779B97F4A7C15
    for number in numbers:
        value = (value ^ (int(number) + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (2**64 - 1)
    return value & (2**63 - 1)
