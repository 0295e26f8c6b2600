import json

import numpy as np
import pytest

from cocodag.errors import CocodagError
from cocodag.formats.shards import SampleMeta, ShardWriter, open_dataset


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
