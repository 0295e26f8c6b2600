import h5py
import numpy as np
import pytest
from _fixtures import make_cityscapes, make_coco
from PIL import Image
from typer.testing import CliRunner

from cocodag.build import BuildConfig, build_dataset
from cocodag.cli import app
from cocodag.errors import CocodagError
from cocodag.formats.shards import SampleMeta, ShardWriter
from cocodag.inspect import inspect_dataset
from cocodag.verify import verify_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    t = tmp_path_factory.mktemp("vi")
    make_cityscapes(t / "cs", n=4)
    make_coco(t / "coco")
    build_dataset(t / "cs", t / "coco", t / "ds", BuildConfig(crop=64, min_object_area=200, shard_size=8),
                  progress=False)
    return t / "ds"


def _write(tmp_path, kind, labels, quadrant=0):
    n, s = labels.shape[:2]
    with ShardWriter(tmp_path, crop_size=s) as w:
        w.write_shard(kind, 0, np.zeros((n, s, s, 3), np.uint8), labels,
                      [SampleMeta(f"f{i}", quadrant=quadrant) for i in range(n)])
    return tmp_path


def test_verify_ok_and_counts(built):
    s = verify_dataset(built)
    ref = {}
    for p in sorted(built.glob("*.h5")):
        with h5py.File(p) as f:
            kind = p.name.split("-")[0]
            ref[kind] = ref.get(kind, 0) + len(f["label"])
    assert s["counts"] == ref and s["shards"] == len(list(built.glob("*.h5")))


def test_verify_rejects_bad_labels(tmp_path):
    lab = np.zeros((3, 8, 8), np.uint8)
    lab[:, 0, 0] = 254
    lab[2, 4, 4] = 100
    with pytest.raises(CocodagError, match=r"dag-00000.h5: sample 2 has label values \[100\]"):
        verify_dataset(_write(tmp_path / "a", "dag", lab))
    lab = np.zeros((2, 8, 8), np.uint8)
    lab[0, 0, 0] = 254
    with pytest.raises(CocodagError, match="dag-00000.h5: DAG sample 1 holds no OOD"):
        verify_dataset(_write(tmp_path / "b", "dag", lab))
    lab = np.full((1, 8, 8), 254, np.uint8)
    with pytest.raises(CocodagError, match="DAG sample 0 holds no in-distribution"):
        verify_dataset(_write(tmp_path / "c", "dag", lab))
    # cityscapes crops need no OOD pixels
    assert verify_dataset(_write(tmp_path / "d", "cityscapes", np.zeros((2, 8, 8), np.uint8), 255))["counts"][
        "cityscapes"] == 2


def test_verify_checksum_and_cli(built, tmp_path):
    import shutil

    r = CliRunner().invoke(app, ["verify", str(built)])
    assert r.exit_code == 0 and "OK" in r.output
    bad = tmp_path / "bad"
    shutil.copytree(built, bad)
    p = sorted(bad.glob("cityscapes-*.h5"))[0]
    with h5py.File(p, "r+") as f:
        f["label"][0, 0, 0] = 3 if f["label"][0, 0, 0] != 3 else 4
    r = CliRunner().invoke(app, ["verify", str(bad)])
    out = r.output.strip()
    assert r.exit_code == 1 and out.startswith("error:") and "sha256 differs" in out and len(out.splitlines()) == 1
    r = CliRunner().invoke(app, ["verify", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "does not exist" in r.output and "Traceback" not in r.output


def test_inspect_counts_fraction_and_sheet(built, tmp_path):
    sheet = tmp_path / "sheet.png"
    info = inspect_dataset(built, sheet=sheet, per_stream=5, thumb=48)
    for kind in ("dag", "cityscapes", "coco"):
        labs = []
        for p in sorted(built.glob(f"{kind}-*.h5")):
            with h5py.File(p) as f:
                labs.append(f["label"][()])
        labs = np.concatenate(labs)
        assert info["streams"][kind]["samples"] == len(labs)
        assert info["streams"][kind]["ood_fraction"] == pytest.approx(float(np.mean(labs == 254)))
        assert info["streams"][kind]["ignore_fraction"] == pytest.approx(float(np.mean(labs == 255)))
    img = np.asarray(Image.open(sheet).convert("RGB"))
    assert img.shape[0] == 3 * (48 + 4) + 4                          # one row per stream
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    assert red.sum() > 50                                              # OOD outlines drawn
    r = CliRunner().invoke(app, ["inspect", str(built), "--out", str(tmp_path / "s2.png")])
    assert r.exit_code == 0 and "dag" in r.output and (tmp_path / "s2.png").is_file()
