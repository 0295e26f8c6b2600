"""Shard data path for MaxEnt fine-tuning: which crops make each batch, and how they are read.

The whole sample order is a pure function of ``(seed, epoch, batch index, rank)``:

* **original stream** (meta-ood's training set): every ``cityscapes`` crop plus a fresh random subset of ``coco``
  crops each epoch, shuffled with a generator seeded by ``(seed, epoch)``. meta-ood draws
  ``proxy_size = int(0.1 * len(cityscapes))`` COCO images (297 for 2975 frames); ``coco_fraction`` is that factor,
  relative to the *Cityscapes* count and capped at the COCO pool.
* **DAG stream**: a permutation of every ``dag`` crop, reshuffled each time it is exhausted (the seed never reset its
  iterator and crashed when it ran dry; ours cycles). Its cursor depends only on how many DAG batches came before.
* every ``embedding_img_interval``-th batch (batch indices ``k-1, 2k-1, ...`` of an epoch) is *replaced* by the next
  DAG batch: ``k=1`` trains on DAG only, ``k=0`` never uses DAG.

Because nothing is stateful, the data position in a checkpoint is just ``(epoch, batch)`` and a resumed run sees the
same batches as an uninterrupted one, for any number of loader workers.

Under DDP a *global* batch of ``batch_size * world_size`` samples is planned and rank ``r`` takes its slice
``[r*batch_size, (r+1)*batch_size)``; the last incomplete global batch is dropped so every rank runs the same number
of steps.

The host side only reads: each batch is read from the shards as contiguous runs (``ShardFile.read(a, b)``, one h5
call per run; with ``block_size > 1`` the shuffle unit is a run of ``block_size`` consecutive crops, giving longer
reads), lands in a uint8 tensor (pinned by the DataLoader on CUDA) and is copied with ``non_blocking=True``. Flip and
ImageNet normalization run on the device (:class:`DeviceAugment`). h5 files are opened lazily in the process that
reads them and reopened after a fork (h5py handles must not cross ``fork``).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cocodag.formats.shards import STREAM_CODES, Dataset, open_dataset

from . import MaxentError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Kind code in column 0 of the ``(n, 2)`` sample refs: cocodag's one table, ``cocodag.formats.shards.STREAM_CODES``.
#: Here a code is only a label (compared for equality, mapped back to the kind; never sorted or fed to an RNG), so
#: the plan and the batches do not depend on its values (tests/maxent_train/test_data.py checks it).
KIND_CODES = STREAM_CODES


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across processes and Python versions, unlike ``hash``)."""
    h = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def _rng(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))


# --------------------------------------------------------------------------------------------------------- reading
class _KindIndex:
    """Global sample index ``0..n-1`` over the shards of one kind (in manifest order) -> (shard number, local index)."""

    def __init__(self, shards: Sequence) -> None:
        self.shards = list(shards)
        counts = np.array([s.num_samples for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.n = int(self.offsets[-1])

    def locate(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        return shard, idx - self.offsets[shard]


class ShardReader:
    """Reads samples of a :class:`cocodag.formats.shards.Dataset` by (kind, global index); opens h5 files lazily,
    per process.

    Picklable: only paths travel to DataLoader workers; each worker opens its own handles on first use and a
    change of ``os.getpid()`` (fork) drops inherited handles.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.index = {k: _KindIndex(dataset.shards_of(k)) for k in KIND_CODES}
        self.crop_size = dataset.crop_size
        self._files: dict = {}
        self._pid = os.getpid()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def _file(self, kind: str, shard: int):
        if self._pid != os.getpid():     # forked: the parent's h5 handles are not ours to use
            self._files = {}
            self._pid = os.getpid()
        key = (kind, shard)
        f = self._files.get(key)
        if f is None:
            f = self._files[key] = self.dataset.open_shard(self.index[kind].shards[shard])
        return f

    def read(self, refs: np.ndarray, out_images: np.ndarray | None = None,
             out_labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read samples ``refs`` ((n, 2) int64 rows of (kind code, global index)) in that order.

        Consecutive samples of one shard are read with a single ``ShardFile.read(a, b)`` call.
        """
        n, s = len(refs), self.crop_size
        images = out_images if out_images is not None else np.empty((n, s, s, 3), np.uint8)
        labels = out_labels if out_labels is not None else np.empty((n, s, s), np.uint8)
        codes = {v: k for k, v in KIND_CODES.items()}
        i = 0
        while i < n:
            kind = codes[int(refs[i, 0])]
            shards, local = self.index[kind].locate(refs[i:i + 1, 1])
            shard, a = int(shards[0]), int(local[0])
            j = i + 1      # extend the run while the next ref is the next sample of the same shard
            limit = self.index[kind].shards[shard].num_samples
            while (j < n and refs[j, 0] == refs[i, 0] and refs[j, 1] == refs[j - 1, 1] + 1
                   and a + (j - i) < limit):
                j += 1
            img, lab = self._file(kind, shard).read(a, a + (j - i))
            images[i:j] = img
            labels[i:j] = lab
            i = j
        return images, labels

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


# --------------------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class MixPlan:
    """The deterministic batch plan (the module docstring says how batches are mixed).

    Parameters
    ----------
    counts : number of samples per kind, e.g. ``{"cityscapes": 2975, "coco": 5000, "dag": 12000}``
    batch_size : per-rank batch size
    embedding_img_interval : k; every k-th batch is a DAG batch (0 = none, 1 = all)
    coco_fraction : COCO crops per epoch = ``int(coco_fraction * n_cityscapes)`` (capped at the pool)
    world_size, rank : DDP split
    block_size : shuffle unit in consecutive crops of one shard (1 = full per-sample shuffle)
    """

    counts: dict
    batch_size: int
    seed: int = 0
    embedding_img_interval: int = 0
    coco_fraction: float = 0.1
    world_size: int = 1
    rank: int = 0
    block_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise MaxentError(f"--batch-size must be > 0, got {self.batch_size}")
        if self.embedding_img_interval < 0:
            raise MaxentError(f"--embedding-img-interval must be >= 0, got {self.embedding_img_interval}")
        if not 0.0 <= self.coco_fraction:
            raise MaxentError(f"coco_fraction must be >= 0, got {self.coco_fraction}")
        if self.block_size <= 0:
            raise MaxentError(f"block_size must be > 0, got {self.block_size}")
        if not 0 <= self.rank < self.world_size:
            raise MaxentError(f"rank {self.rank} outside world size {self.world_size}")
        k = self.embedding_img_interval
        if self.counts.get("cityscapes", 0) + self.counts.get("coco", 0) == 0 and k != 1:
            raise MaxentError("data has no cityscapes/coco crops (the original stream); use "
                              "--embedding-img-interval 1 to train on DAG crops only")
        if k > 0 and self.counts.get("dag", 0) == 0:
            raise MaxentError(f"--embedding-img-interval {k} needs DAG crops but the data has none "
                              f"(use --embedding-img-interval 0)")
        if self.batches_per_epoch == 0:
            raise MaxentError(f"too few samples for one batch: {self.epoch_size} original-stream samples, "
                              f"need batch_size*world_size = {self.global_batch}")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def num_coco(self) -> int:
        return min(self.counts.get("coco", 0), int(self.coco_fraction * self.counts.get("cityscapes", 0)))

    @property
    def epoch_size(self) -> int:
        if self.embedding_img_interval == 1:   # all-DAG epochs: one pass over the DAG crops
            return self.counts.get("dag", 0)
        return self.counts.get("cityscapes", 0) + self.num_coco

    @property
    def batches_per_epoch(self) -> int:
        return self.epoch_size // self.global_batch

    def is_dag_batch(self, batch: int) -> bool:
        k = self.embedding_img_interval
        return k > 0 and batch % k == k - 1

    def dag_batches_before(self, epoch: int, batch: int) -> int:
        k, nb = self.embedding_img_interval, self.batches_per_epoch
        if k == 0:
            return 0
        return epoch * (nb // k) + batch // k

    def original_order(self, epoch: int, shard_sizes: dict | None = None) -> np.ndarray:
        """(epoch_size, 2) refs (kind code, global index) of the shuffled original stream of ``epoch``."""
        rng = _rng(self.seed, "original", epoch)
        n_cs, n_coco = self.counts.get("cityscapes", 0), self.counts.get("coco", 0)
        coco = np.sort(rng.permutation(n_coco)[: self.num_coco]) if n_coco else np.zeros(0, np.int64)
        refs = np.concatenate([
            np.stack([np.full(n_cs, KIND_CODES["cityscapes"]), np.arange(n_cs)], 1),
            np.stack([np.full(len(coco), KIND_CODES["coco"]), coco], 1),
        ]).astype(np.int64)
        return _block_shuffle(refs, rng, self.block_size, shard_sizes)

    def dag_cycle(self, cycle: int, shard_sizes: dict | None = None) -> np.ndarray:
        n = self.counts.get("dag", 0)
        refs = np.stack([np.full(n, KIND_CODES["dag"]), np.arange(n)], 1).astype(np.int64)
        return _block_shuffle(refs, _rng(self.seed, "dag", cycle), self.block_size, shard_sizes)

    def batch_refs(self, epoch: int, batch: int, shard_sizes: dict | None = None,
                   cache: dict | None = None) -> np.ndarray:
        """(batch_size, 2) refs of this rank's part of batch ``batch`` of ``epoch``.

        ``cache`` (any dict kept by the caller) memoizes the epoch's permutation and the DAG cycles.
        """
        cache = {} if cache is None else cache
        if not 0 <= batch < self.batches_per_epoch:
            raise IndexError(batch)
        lo = self.rank * self.batch_size
        if self.embedding_img_interval == 1:
            start = (epoch * self.batches_per_epoch + batch) * self.global_batch
            return self._dag_slice(start + lo, self.batch_size, shard_sizes, cache)
        if self.is_dag_batch(batch):
            start = self.dag_batches_before(epoch, batch) * self.global_batch
            return self._dag_slice(start + lo, self.batch_size, shard_sizes, cache)
        key = ("original", epoch)
        if key not in cache:
            cache[key] = self.original_order(epoch, shard_sizes)
        order = cache[key]
        g = batch * self.global_batch
        return order[g + lo: g + lo + self.batch_size]

    def _dag_slice(self, start: int, n: int, shard_sizes: dict | None, cache: dict) -> np.ndarray:
        """Samples ``start .. start+n-1`` of the endless DAG stream (cycle c = reshuffle number c)."""
        total = self.counts["dag"]
        out = []
        while n > 0:
            cycle, off = divmod(start, total)
            take = min(n, total - off)
            key = ("dag", cycle)
            if key not in cache:
                for k in [k for k in cache if k[0] == "dag" and k[1] < cycle - 1]:
                    del cache[k]          # keep memory bounded: cycles only move forward
                cache[key] = self.dag_cycle(cycle, shard_sizes)
            out.append(cache[key][off: off + take])
            start += take
            n -= take
        return np.concatenate(out)


def _block_shuffle(refs: np.ndarray, rng: np.random.Generator, block_size: int,
                   shard_sizes: dict | None) -> np.ndarray:
    """Shuffle ``refs`` in blocks of ``block_size`` consecutive samples that never cross a shard boundary."""
    if len(refs) == 0:
        return refs
    if block_size == 1:
        return refs[rng.permutation(len(refs))]
    # A new block starts every block_size samples and at every change of kind or shard.
    kinds = refs[:, 0]
    shard_id = np.zeros(len(refs), np.int64)
    if shard_sizes:
        codes = {v: k for k, v in KIND_CODES.items()}
        for code in np.unique(kinds):
            m = kinds == code
            offs = np.concatenate([[0], np.cumsum(shard_sizes.get(codes[int(code)], []))])
            shard_id[m] = np.searchsorted(offs, refs[m, 1], side="right") - 1
    key_change = np.ones(len(refs), bool)
    key_change[1:] = ((kinds[1:] != kinds[:-1]) | (shard_id[1:] != shard_id[:-1])
                      | (refs[1:, 1] != refs[:-1, 1] + 1))
    starts: list[int] = []
    run_start = 0
    for i in range(len(refs)):
        if key_change[i]:
            run_start = i
        if key_change[i] or (i - run_start) % block_size == 0:
            starts.append(i)
    bounds = [*starts, len(refs)]
    blocks = [refs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])


# --------------------------------------------------------------------------------------------------------- loading
class BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose item ``b`` is the whole uint8 batch ``b`` of one epoch.

    Used with ``DataLoader(batch_size=None)``: one worker reads one whole batch (long contiguous reads).

    Returns ``(images (B,S,S,3) uint8, labels (B,S,S) uint8, is_dag bool)`` as CPU tensors.
    """

    def __init__(self, reader: ShardReader, plan: MixPlan, epoch: int) -> None:
        self.reader, self.plan, self.epoch = reader, plan, epoch
        self.shard_sizes = {k: [s.num_samples for s in idx.shards] for k, idx in reader.index.items()}
        self._cache: dict = {}

    def __len__(self) -> int:
        return self.plan.batches_per_epoch

    def refs(self, batch: int) -> np.ndarray:
        return self.plan.batch_refs(self.epoch, batch, self.shard_sizes, self._cache)

    def __getitem__(self, batch: int):
        refs = self.refs(batch)
        images, labels = self.reader.read(refs)
        return torch.from_numpy(images), torch.from_numpy(labels), bool(self.plan.is_dag_batch(batch)
                                                                        or self.plan.embedding_img_interval == 1)


class ShardLoader:
    """Iterates ``(epoch, batch, images, labels)`` of device-ready uint8 batches from a data position on.

    Parameters
    ----------
    dataset : :class:`cocodag.formats.shards.Dataset`
    plan : :class:`MixPlan`
    device : where batches go (uint8; normalize with :class:`DeviceAugment`)
    workers : DataLoader worker processes (0 = read in this process); results do not depend on it
    """

    def __init__(self, dataset, plan: MixPlan, device: torch.device | str = "cpu", workers: int = 0,
                 prefetch_factor: int = 2) -> None:
        self.reader = ShardReader(dataset)
        self.plan = plan
        self.device = torch.device(device)
        self.workers = int(workers)
        self.prefetch_factor = prefetch_factor
        if self.workers < 0:
            raise MaxentError(f"--workers must be >= 0, got {workers}")

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, bool]]:
        ds = BatchDataset(self.reader, self.plan, epoch)
        batches = list(range(start_batch, len(ds)))
        if not batches:
            return
        # prefetch_factor is only accepted with workers (torch refuses it for in-process loading)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, sampler=batches, num_workers=self.workers, pin_memory=self.device.type == "cuda",
            prefetch_factor=self.prefetch_factor if self.workers > 0 else None, persistent_workers=False)
        for b, (images, labels, is_dag) in zip(batches, loader):
            yield (b, images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True),
                   bool(is_dag))


class DeviceAugment:
    """Horizontal flip (p, seeded by position) + ImageNet normalization, run on the batch's device.

    Flip decisions come from a CPU generator seeded by ``(seed, epoch, batch, rank)`` so they do not depend on the
    device or on how many batches were drawn before (resume-exact).
    """

    def __init__(self, seed: int = 0, flip_p: float = 0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.seed, self.flip_p, self.mean, self.std = seed, flip_p, mean, std

    def flips(self, n: int, epoch: int, batch: int, rank: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "flip", epoch, batch, rank))
        return torch.rand(n, generator=g) < self.flip_p

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int = 0, batch: int = 0,
                 rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B,S,S,3) uint8, labels (B,S,S) uint8 -> (B,3,S,S) float32 normalized, (B,S,S) int64."""
        flip = self.flips(images.shape[0], epoch, batch, rank).tolist()
        # flip and transpose while still uint8 (4x less memory traffic than on float), then one fused normalize;
        # a per-sample loop beats index_put with a handful of samples per batch
        x = images.permute(0, 3, 1, 2).contiguous()
        y = labels.long()
        for i, f in enumerate(flip):
            if f:
                x[i] = x[i].flip(-1)
                y[i] = y[i].flip(-1)
        return normalize_nchw(x, self.mean, self.std), y


def normalize_nchw(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(B,3,H,W) uint8 -> float32 ``(x - 255·mean) / (255·std)`` on the tensor's device."""
    dev = images.device
    scale = 1.0 / (torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1) * 255.0)
    shift = -torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1) * 255.0 * scale
    return images.float().mul_(scale).add_(shift)


def normalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(B,H,W,3) uint8 RGB on any device -> (B,3,H,W) float32 ImageNet-normalized (on the same device)."""
    return normalize_nchw(images.permute(0, 3, 1, 2).contiguous(), mean, std)


def open_training_data(data_dir: Path | str, *, verify_checksums: bool = True) -> Dataset:
    """Open a cocodag dataset (manifest and checksums checked by :mod:`cocodag.formats.shards`; its errors stay
    ``CocodagError``)."""
    return open_dataset(data_dir, verify_checksums=verify_checksums)
