"""maxent_train.data: the batch mixing plan, shard reads, DDP split, device augmentation."""
from __future__ import annotations

import pickle
from collections import Counter

import h5py
import numpy as np
import pytest
import torch
from _maxent_shards import make_shards

from cocodag.formats.shards import open_dataset
from maxent_train import MaxentError
from maxent_train.data import IMAGENET_MEAN, IMAGENET_STD, KIND_CODES, DeviceAugment, MixPlan, ShardLoader, ShardReader

CS, COCO, DAG = KIND_CODES["cityscapes"], KIND_CODES["coco"], KIND_CODES["dag"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data") / "ds", {"cityscapes": 40, "coco": 30, "dag": 14},
                       size=16, shard_size=8)


def _epoch(plan: MixPlan, epoch: int) -> list[np.ndarray]:
    return [plan.batch_refs(epoch, b) for b in range(plan.batches_per_epoch)]


def test_original_stream_is_all_cityscapes_plus_fresh_coco_subset():
    plan = MixPlan({"cityscapes": 40, "coco": 30, "dag": 0}, batch_size=4, seed=3, coco_fraction=0.25)
    assert plan.num_coco == 10 and plan.epoch_size == 50 and plan.batches_per_epoch == 12
    subsets = []
    for epoch in range(3):
        order = plan.original_order(epoch)
        cs = order[order[:, 0] == CS, 1]
        coco = order[order[:, 0] == COCO, 1]
        assert sorted(cs.tolist()) == list(range(40))          # every Cityscapes crop exactly once
        assert len(coco) == 10 and len(set(coco.tolist())) == 10 and coco.max() < 30
        subsets.append(frozenset(coco.tolist()))
        # batches are consecutive slices of that order (drop_last)
        assert np.array_equal(np.concatenate(_epoch(plan, epoch)), order[:48])
    assert len(set(subsets)) == 3                               # a fresh subset each epoch
    # seeded: the same (seed, epoch) gives the same order, another seed another one
    assert np.array_equal(plan.original_order(1), MixPlan(plan.counts, 4, seed=3, coco_fraction=0.25)
                          .original_order(1))
    assert not np.array_equal(plan.original_order(1), MixPlan(plan.counts, 4, seed=4, coco_fraction=0.25)
                              .original_order(1))


def test_meta_ood_proxy_size_is_ten_percent_of_cityscapes():
    plan = MixPlan({"cityscapes": 2975, "coco": 5000, "dag": 0}, batch_size=8)
    assert plan.num_coco == 297


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_dag_batches_replace_every_kth_batch_and_cycle(k):
    counts = {"cityscapes": 40, "coco": 30, "dag": 14}
    plan = MixPlan(counts, batch_size=4, seed=1, embedding_img_interval=k)
    dag_stream = []
    for epoch in range(4):
        order = plan.original_order(epoch)
        for b in range(plan.batches_per_epoch):
            refs = plan.batch_refs(epoch, b)
            expect_dag = k == 1 or (k > 0 and (b + 1) % k == 0)     # 1-based: batches k, 2k, ...
            assert plan.is_dag_batch(b) == (k > 0 and (b + 1) % k == 0)
            if expect_dag:
                assert (refs[:, 0] == DAG).all()
                dag_stream.extend(refs[:, 1].tolist())
            else:
                assert (refs[:, 0] != DAG).all()
                assert np.array_equal(refs, order[b * 4:(b + 1) * 4])   # replaced, not shifted
    if k == 0:
        assert not dag_stream
        return
    # the DAG stream cycles: every complete block of 14 is a permutation of all DAG crops, reshuffled each cycle
    full = len(dag_stream) // 14
    assert full >= 2
    cycles = [dag_stream[i * 14:(i + 1) * 14] for i in range(full)]
    for c in cycles:
        assert sorted(c) == list(range(14))
    assert cycles[0] != cycles[1]


def test_plan_rejects_bad_settings():
    with pytest.raises(MaxentError, match="DAG"):
        MixPlan({"cityscapes": 40, "coco": 0, "dag": 0}, batch_size=4, embedding_img_interval=2)
    with pytest.raises(MaxentError, match="batch"):
        MixPlan({"cityscapes": 3, "coco": 0, "dag": 0}, batch_size=4)
    with pytest.raises(MaxentError, match="original stream"):
        MixPlan({"cityscapes": 0, "coco": 0, "dag": 10}, batch_size=4, embedding_img_interval=2)


def test_ddp_ranks_split_the_global_batch():
    counts = {"cityscapes": 40, "coco": 30, "dag": 14}
    one = MixPlan(counts, batch_size=8, seed=5, embedding_img_interval=3)
    ranks = [MixPlan(counts, batch_size=4, seed=5, embedding_img_interval=3, world_size=2, rank=r) for r in (0, 1)]
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch == one.batches_per_epoch
    for epoch in range(2):
        for b in range(one.batches_per_epoch):
            a, c = ranks[0].batch_refs(epoch, b), ranks[1].batch_refs(epoch, b)
            assert np.array_equal(np.concatenate([a, c]), one.batch_refs(epoch, b))
            assert not {tuple(r) for r in a} & {tuple(r) for r in c}


def test_block_shuffle_keeps_runs_within_shards():
    counts = {"cityscapes": 40, "coco": 0, "dag": 0}
    sizes = {"cityscapes": [8] * 5, "coco": [], "dag": []}
    plan = MixPlan(counts, batch_size=4, seed=0, block_size=4)
    order = plan.original_order(0, sizes)
    assert sorted(order[:, 1].tolist()) == list(range(40))
    for i in range(0, 40, 4):        # shards of 8 split into blocks of 4: each aligned block stays together
        blk = order[i:i + 4, 1]
        assert np.array_equal(blk, np.arange(blk[0], blk[0] + 4)) and blk[0] % 4 == 0


def test_reader_matches_h5py_and_reads_runs(data_dir, monkeypatch):
    ds = open_dataset(data_dir)
    reader = ShardReader(ds)
    # reference: read every cityscapes sample straight from the files with h5py
    ref_img, ref_lab = [], []
    for info in ds.shards_of("cityscapes"):
        with h5py.File(info.path, "r") as f:
            ref_img.append(f["image"][()])
            ref_lab.append(f["label"][()])
    ref_img, ref_lab = np.concatenate(ref_img), np.concatenate(ref_lab)
    idx = np.array([5, 6, 7, 8, 9, 30, 2, 3], np.int64)      # 5..7 | 8..9 cross a shard border at 8
    refs = np.stack([np.full(len(idx), CS), idx], 1)
    calls = []
    from cocodag.formats.shards import ShardFile

    orig = ShardFile.read
    monkeypatch.setattr(ShardFile, "read", lambda self, a, b: calls.append((self.path.name, a, b)) or orig(self, a, b))
    images, labels = reader.read(refs)
    assert np.array_equal(images, ref_img[idx]) and np.array_equal(labels, ref_lab[idx])
    assert calls == [("cityscapes-00000.h5", 5, 8), ("cityscapes-00001.h5", 0, 2), ("cityscapes-00003.h5", 6, 7),
                     ("cityscapes-00000.h5", 2, 4)]
    # pickling (to a worker) drops open handles; a pid change (fork) reopens them
    assert reader._files
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._files == {}
    old = dict(reader._files)
    reader._pid = -1
    reader.read(refs[:1])
    assert all(reader._files[k] is not old[k] for k in reader._files)
    reader.close()
    for f in old.values():
        f.close()


def test_loader_output_independent_of_workers(data_dir):
    ds = open_dataset(data_dir)
    plan = MixPlan({k: ds.num_samples(k) for k in KIND_CODES}, batch_size=4, seed=2, embedding_img_interval=2)

    def collect(workers, start=0):
        return [(b, im.clone(), lab.clone(), d) for b, im, lab, d in
                ShardLoader(ds, plan, workers=workers).epoch_batches(1, start)]

    a, b = collect(0), collect(2)
    assert [x[0] for x in a] == list(range(plan.batches_per_epoch))
    for x, y in zip(a, b, strict=True):
        assert x[0] == y[0] and x[3] == y[3] and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2])
        assert x[1].dtype == torch.uint8 and x[1].shape == (4, 16, 16, 3)
    # resuming at batch 3 yields exactly the tail
    tail = collect(0, start=3)
    assert [x[0] for x in tail] == [x[0] for x in a[3:]]
    assert all(torch.equal(x[1], y[1]) for x, y in zip(tail, a[3:]))


def test_device_augment_matches_numpy_reference():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    labels = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)
    aug = DeviceAugment(seed=11, flip_p=0.5)
    x, y = aug(torch.from_numpy(images), torch.from_numpy(labels), epoch=2, batch=3)
    flips = aug.flips(6, 2, 3).numpy()
    ref = (images.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    ref = ref.transpose(0, 3, 1, 2)
    ref_lab = labels.astype(np.int64)
    ref[flips] = ref[flips][..., ::-1]
    ref_lab[flips] = ref_lab[flips][..., ::-1]
    np.testing.assert_allclose(x.numpy(), ref, atol=1e-5)
    assert np.array_equal(y.numpy(), ref_lab) and y.dtype == torch.int64
    # the flip pattern depends on the position only, and p is respected on average
    assert torch.equal(aug.flips(6, 2, 3), aug.flips(6, 2, 3))
    many = torch.cat([aug.flips(100, 0, b) for b in range(20)]).float().mean().item()
    assert 0.45 < many < 0.55
    assert Counter(DeviceAugment(seed=0, flip_p=0.0).flips(50, 0, 0).tolist()) == Counter({False: 50})


def test_kind_codes_are_labels_only(data_dir, monkeypatch):
    # the codes follow cocodag's kind order; any other numbering must give the same samples in the same order
    from cocodag.formats.shards import KINDS, STREAM_CODES
    from maxent_train import data

    assert KIND_CODES == STREAM_CODES and list(KIND_CODES) == list(KINDS)
    ds = open_dataset(data_dir)
    counts = {k: ds.num_samples(k) for k in KINDS}

    def plan_and_batches(codes):
        monkeypatch.setattr(data, "KIND_CODES", codes)
        reader = ShardReader(ds)
        sizes = {k: [s.num_samples for s in idx.shards] for k, idx in reader.index.items()}
        names = {v: k for k, v in codes.items()}
        out = []
        for block_size, k in ((1, 2), (3, 3), (2, 1)):
            plan = MixPlan(counts, batch_size=4, seed=1, embedding_img_interval=k, block_size=block_size)
            for epoch in range(2):
                for b in range(plan.batches_per_epoch):
                    refs = plan.batch_refs(epoch, b, sizes)
                    images, labels = reader.read(refs)
                    out.append(([(names[int(c)], int(i)) for c, i in refs], images, labels))
        reader.close()
        return out

    ref = plan_and_batches(dict(KIND_CODES))
    for codes in ({"cityscapes": 0, "coco": 1, "dag": 2}, {"coco": 7, "dag": 3, "cityscapes": 5}):
        other = plan_and_batches(codes)
        assert len(other) == len(ref)
        for (r1, i1, l1), (r2, i2, l2) in zip(ref, other):
            assert r1 == r2 and np.array_equal(i1, i2) and np.array_equal(l1, l2)
