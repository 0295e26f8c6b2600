import json

import h5py
import numpy as np
import pytest

from cocodag.errors import CocodagError
from cocodag.formats.shards import KINDS, STREAM_CODES, SampleMeta, ShardWriter, open_dataset, sha256_file, write_shard


def _samples(rng, n, s):
    imgs = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    labs = rng.integers(0, 19, (n, s, s), dtype=np.uint8)
    return imgs, labs


def test_roundtrip_and_manifest(tmp_path):
    rng = np.random.default_rng(0)
    imgs, labs = _samples(rng, 5, 16)
    with ShardWriter(tmp_path, crop_size=16, shard_size=2, config={"a": 1}, seed=3) as w:
        for i in range(5):
            w.add("cityscapes", imgs[i], labs[i], frame=f"f{i}")
    ds = open_dataset(tmp_path)
    assert [s.num_samples for s in ds.shards] == [2, 2, 1]
    assert ds.manifest["totals"]["cityscapes"] == 5 and ds.manifest["seed"] == 3
    got = list(ds.iter_samples("cityscapes"))
    assert all((g[0] == imgs[i]).all() and (g[1] == labs[i]).all() for i, g in enumerate(got))
    with ds.open_shard(ds.shards[0]) as sh:
        a, b = sh.read(0, 2)
        assert a.shape == (2, 16, 16, 3) and sh.read_meta()["frame"].tolist() == ["f0", "f1"]
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_shard_and_missing_manifest(tmp_path):
    rng = np.random.default_rng(1)
    imgs, labs = _samples(rng, 2, 8)
    with ShardWriter(tmp_path, crop_size=8) as w:
        w.write_shard("dag", 0, imgs, labs, [SampleMeta("a"), SampleMeta("b")])
    p = tmp_path / "dag-00000.h5"
    data = bytearray(p.read_bytes())
    data[-100] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CocodagError, match="sha256 differs"):
        open_dataset(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(CocodagError, match="no manifest.json"):
        open_dataset(tmp_path)


def test_manifest_not_written_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, crop_size=8):
            raise RuntimeError("boom")
    assert not (tmp_path / "manifest.json").exists()
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CocodagError, match="format"):
        open_dataset(tmp_path)


def test_stream_codes_are_pinned():
    # They seed every build unit's generator: a changed value would change the bytes of every dataset.
    assert STREAM_CODES == {"dag": 0, "cityscapes": 1, "coco": 2}
    assert tuple(STREAM_CODES) == KINDS


def test_write_shard_entry_hash_and_failed_write_leaves_nothing(tmp_path):
    rng = np.random.default_rng(2)
    imgs, labs = _samples(rng, 3, 8)
    p = tmp_path / "coco-00000.h5"
    e = write_shard(p, "coco", imgs, labs, [SampleMeta(f"f{i}") for i in range(3)])
    assert e == {"file": p.name, "kind": "coco", "num_samples": 3, "sha256": sha256_file(p),
                 "bytes": p.stat().st_size}
    assert not list(tmp_path.glob("*.tmp"))
    q = tmp_path / "coco-00001.h5"
    with pytest.raises(TypeError):      # an attribute h5py cannot store: fails half-way through the write
        write_shard(q, "coco", imgs, labs, [SampleMeta("a")] * 3, extra_attrs={"bad": object()})
    assert not q.exists() and not list(tmp_path.glob("*.tmp"))


def test_shard_built_in_memory_commit_hook_and_refused_commit(tmp_path):
    rng = np.random.default_rng(3)
    imgs, labs = _samples(rng, 3, 8)
    p = tmp_path / "dag-00000.h5"
    calls = []
    e = write_shard(p, "dag", imgs, labs, [SampleMeta(f"f{i}") for i in range(3)], compression="gzip",
                    before_commit=lambda: calls.append(p.exists()))
    assert calls == [False]                       # the hook runs once, right before the rename
    with h5py.File(p) as f:                       # a complete, closed HDF5 file
        assert np.array_equal(f["image"][()], imgs) and np.array_equal(f["label"][()], labs)
        assert f["image"].compression == "gzip" and f.attrs["num_samples"] == 3
    assert e["bytes"] == p.stat().st_size and e["sha256"] == sha256_file(p)

    def refuse():
        raise RuntimeError("build is gone")

    q = tmp_path / "dag-00001.h5"
    with pytest.raises(RuntimeError):
        write_shard(q, "dag", imgs, labs, [SampleMeta("a")] * 3, before_commit=refuse)
    assert not q.exists() and not list(tmp_path.glob("*.tmp"))


def test_manifest_with_bad_version_or_type_is_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "cocodag-dataset", "version": "x"}))
    with pytest.raises(CocodagError, match="manifest version 'x' not supported"):
        open_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CocodagError, match="corrupt manifest \\(a JSON list, expected an object\\)"):
        open_dataset(tmp_path)


def _recompress_lzf(path):
    """Rewrite a shard's image/label with lzf, as earlier versions could (same data, other encoding)."""
    with h5py.File(path, "r+") as f:
        for name in ("image", "label"):
            data, chunks = f[name][()], f[name].chunks
            del f[name]
            f.create_dataset(name, data=data, chunks=chunks, compression="lzf")


def test_lzf_is_refused_for_writing_and_lzf_shards_still_read(tmp_path):
    rng = np.random.default_rng(5)
    imgs, labs = _samples(rng, 3, 16)
    with pytest.raises(CocodagError, match=r"--compression lzf: lzf is no longer written: h5py's LZF encoder never "
                                           r"clears its hash table.*use gzip .* files written with lzf still read"):
        write_shard(tmp_path / "dag-00000.h5", "dag", imgs, labs, [SampleMeta("a")] * 3, compression="lzf")
    assert not list(tmp_path.iterdir())
    # a dataset of an earlier version, with lzf shards: opens, verifies and reads the same samples
    root = tmp_path / "old"
    with ShardWriter(root, crop_size=16, shard_size=2, config={"a": 1}, seed=0) as w:
        for i in range(3):
            w.add("dag", imgs[i], labs[i], frame=f"f{i}")
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["shards"]:
        _recompress_lzf(root / entry["file"])
        entry["sha256"], entry["bytes"] = sha256_file(root / entry["file"]), (root / entry["file"]).stat().st_size
    (root / "manifest.json").write_text(json.dumps(manifest))
    ds = open_dataset(root)
    with h5py.File(ds.shards[0].path) as f:
        assert f["image"].compression == "lzf"
    got = list(ds.iter_samples("dag"))
    assert all((g[0] == imgs[i]).all() and (g[1] == labs[i]).all() for i, g in enumerate(got))
