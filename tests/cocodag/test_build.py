"""cocodag build: invariants, determinism across workers, resume after kill -9, shard ranges, bad input."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from _fixtures import SMALL, TRAIN_IDS, make_cityscapes, make_coco
from PIL import Image
from typer.testing import CliRunner

from cocodag.build import BuildConfig, build_dataset
from cocodag.cityscapes import LABEL_SOURCES
from cocodag.cli import app
from cocodag.errors import CocodagError
from cocodag.formats.choices import COMPRESSIONS
from cocodag.formats.shards import open_dataset
from cocodag.labels import COCO_BACKGROUNDS
from cocodag.verify import verify_dataset

ROOT = Path(__file__).resolve().parents[2]
CFG = dict(crop=64, min_object_area=200, shard_size=8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    t = tmp_path_factory.mktemp("inputs")
    make_cityscapes(t / "cs", n=6)
    make_coco(t / "coco")
    return t / "cs", t / "coco"


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "ds"
    build_dataset(*inputs, out, BuildConfig(**CFG), progress=False)
    return out


def _arrays(out: Path):
    ds = open_dataset(out)
    res = {}
    for info in ds.shards:
        with h5py.File(info.path) as f:
            res[info.path.name] = (f["image"][()], f["label"][()], f["meta/crop"][()])
    return res


def _frame_ref(cs_root: Path, name: str):
    p = next(cs_root.rglob(f"{name}_leftImg8bit.png"))
    ids = np.asarray(Image.open(next(cs_root.rglob(f"{name}_gtFine_labelIds.png"))))
    return np.asarray(Image.open(p).convert("RGB")), np.vectorize(lambda v: TRAIN_IDS[int(v)])(ids).astype(np.uint8)


def test_streams_and_invariants(built, inputs):
    ds = open_dataset(built)
    m = ds.manifest
    assert m["totals"]["cityscapes"] == 6 and m["totals"]["coco"] == 4
    assert m["totals"]["dag"] + sum(m["dropped"][k] for k in ("dag_no_ood", "dag_no_id")) == 6 * 4
    assert m["config"]["crop"] == 64 and m["inputs"]["cityscapes"]["frames"] == 6
    assert m["inputs"]["coco"]["json_sha256"] and "versions" in m
    allowed = set(range(19)) | {254, 255}
    for info in ds.shards:
        with h5py.File(info.path) as f:
            img, lab = f["image"][()], f["label"][()]
            meta = {k: f["meta"][k][()] for k in f["meta"]}
        assert img.shape[1:] == (64, 64, 3) and img.dtype == np.uint8 and lab.dtype == np.uint8
        assert set(np.unique(lab).tolist()) <= allowed
        for i in range(len(lab)):
            frame = meta["frame"][i].decode()
            x0, y0, x1, y1 = meta["crop"][i]
            if info.kind == "dag":
                assert (lab[i] == 254).any() and (lab[i] < 19).any()
                # the crop box is the centroid quadrant, shifted only where it would leave the 256x128 frame
                cx, cy = meta["centroid"][i]
                q = meta["quadrant"][i]
                ux, uy = (cx - 64 if q in (0, 2) else cx), (cy - 64 if q in (0, 1) else cy)
                ex, ey = min(max(ux, 0), 256 - 64), min(max(uy, 0), 128 - 64)
                assert (x0, y0, x1, y1) == (ex, ey, ex + 64, ey + 64)
                # outside the pasted object the crop is the untouched frame
                rgb, tid = _frame_ref(inputs[0], frame)
                keep = lab[i] != 254
                assert np.array_equal(img[i][keep], rgb[y0:y1, x0:x1][keep])
                assert np.array_equal(lab[i][keep], tid[y0:y1, x0:x1][keep])
            elif info.kind == "cityscapes":
                rgb, tid = _frame_ref(inputs[0], frame)
                ri, rl = rgb[y0:y1, x0:x1], tid[y0:y1, x0:x1]
                flipped = np.array_equal(img[i], ri[:, ::-1])
                assert flipped or np.array_equal(img[i], ri)
                assert np.array_equal(lab[i], rl[:, ::-1] if flipped else rl)
            else:
                assert set(np.unique(lab[i]).tolist()) <= {254, 255} and (lab[i] == 254).any()
                coco_img = np.asarray(Image.open(inputs[1] / "train2017" / frame).convert("RGB"))
                assert np.abs(img[i].astype(int) - coco_img[y0:y1, x0:x1]).max() <= 3   # JPEG decoders differ slightly


def test_dag_centroid_is_object_centroid(built):
    """Reassemble the 4 quadrants of each paste: the recorded centroid is the mean of the OOD pixel coordinates."""
    ds = open_dataset(built)
    checked = 0
    for info in ds.shards_of("dag"):
        with h5py.File(info.path) as f:
            lab, crop, cen, q = f["label"][()], f["meta/crop"][()], f["meta/centroid"][()], f["meta/quadrant"][()]
        if len(q) != 4:
            continue
        canvas = np.zeros((128, 256), bool)
        for i in range(4):
            x0, y0, x1, y1 = crop[i]
            canvas[y0:y1, x0:x1] |= lab[i] == 254
        ys, xs = np.nonzero(canvas)
        assert abs(xs.mean() - cen[0][0]) <= 0.5 and abs(ys.mean() - cen[0][1]) <= 0.5
        checked += 1
    assert checked >= 3


def test_counts_and_background(inputs, tmp_path):
    cfg = BuildConfig(**CFG, dag_samples=9, cityscapes_crops_per_frame=2, coco_samples=6, coco_background="road")
    build_dataset(*inputs, tmp_path / "a", cfg, progress=False)
    m = open_dataset(tmp_path / "a").manifest
    assert m["totals"]["cityscapes"] == 12 and m["totals"]["coco"] == 6
    assert m["totals"]["dag"] + m["dropped"]["dag_no_ood"] + m["dropped"]["dag_no_id"] == 36
    for lab in (a[1] for n, a in _arrays(tmp_path / "a").items() if n.startswith("coco")):
        assert set(np.unique(lab).tolist()) <= {0, 254}
    build_dataset(*inputs, tmp_path / "b", BuildConfig(**CFG, streams=("cityscapes",)), progress=False)
    assert open_dataset(tmp_path / "b").manifest["totals"] == {"dag": 0, "cityscapes": 6, "coco": 0}


def test_crops_without_ood_are_dropped_and_counted(inputs, tmp_path):
    """Objects made of two squares on a diagonal: the quadrants off that diagonal hold no object pixel."""
    co = tmp_path / "coco"
    jp = make_coco(co)
    d = json.loads(jp.read_text())
    for a in d["annotations"]:
        if 100 <= a["image_id"] < 200 and a["area"] >= 200:
            a["segmentation"] = [[40.0, 10.0, 52.0, 10.0, 52.0, 22.0, 40.0, 22.0],   # top-right square
                                 [10.0, 40.0, 22.0, 40.0, 22.0, 52.0, 10.0, 52.0]]   # bottom-left square
            a["area"] = 288.0
    jp.write_text(json.dumps(d))
    res = build_dataset(inputs[0], co, tmp_path / "o", BuildConfig(**CFG, streams=("dag",)), progress=False)
    m = res.manifest
    assert m["dropped"]["dag_no_ood"] > 0
    assert m["totals"]["dag"] + m["dropped"]["dag_no_ood"] + m["dropped"]["dag_no_id"] == 4 * 6
    assert verify_dataset(tmp_path / "o")["counts"]["dag"] == m["totals"]["dag"]
    for _, lab, _ in _arrays(tmp_path / "o").values():
        assert all((lab[i] == 254).any() for i in range(len(lab)))


def test_workers_do_not_change_bytes(inputs, built, tmp_path):
    build_dataset(*inputs, tmp_path / "w2", BuildConfig(**CFG), workers=2, progress=False)
    a, b = _arrays(built), _arrays(tmp_path / "w2")
    assert a.keys() == b.keys()
    for k in a:
        assert all(np.array_equal(x, y) for x, y in zip(a[k], b[k])), k
    s1 = {e["file"]: e["sha256"] for e in open_dataset(built).manifest["shards"]}
    s2 = {e["file"]: e["sha256"] for e in open_dataset(tmp_path / "w2").manifest["shards"]}
    assert s1 == s2
    build_dataset(*inputs, tmp_path / "s1", BuildConfig(**{**CFG, "seed": 1}), progress=False)
    c = _arrays(tmp_path / "s1")
    assert not np.array_equal(a["dag-00000.h5"][1], c["dag-00000.h5"][1])


def test_shard_range_then_merge(inputs, built, tmp_path):
    out = tmp_path / "parts"
    n = open_dataset(built).manifest["num_tasks"]
    r1 = build_dataset(*inputs, out, BuildConfig(**CFG), shard_range=f"0:{n // 2}", progress=False)
    assert r1.manifest is None and (out / f"manifest.part-0-{n // 2}.json").is_file()
    assert not (out / "manifest.json").exists()
    r2 = build_dataset(*inputs, out, BuildConfig(**CFG), shard_range=f"{n // 2}:{n}", progress=False)
    assert r2.manifest is not None and r2.built_tasks == n - n // 2
    s1 = {e["file"]: e["sha256"] for e in open_dataset(built).manifest["shards"]}
    assert {e["file"]: e["sha256"] for e in open_dataset(out).manifest["shards"]} == s1
    with pytest.raises(CocodagError, match="--shard-range"):
        build_dataset(*inputs, out, BuildConfig(**CFG), shard_range=f"0:{n + 5}", progress=False)


def test_other_config_refused(inputs, built, tmp_path):
    out = tmp_path / "o"
    build_dataset(*inputs, out, BuildConfig(**CFG), progress=False)
    again = build_dataset(*inputs, out, BuildConfig(**CFG), progress=False)    # same config: all kept
    assert again.built_tasks == 0 and again.kept_tasks == again.total_tasks
    with pytest.raises(CocodagError, match="another config"):
        build_dataset(*inputs, out, BuildConfig(**{**CFG, "seed": 7}), progress=False)
    r = build_dataset(*inputs, out, BuildConfig(**{**CFG, "seed": 7}), overwrite=True, progress=False)
    assert r.kept_tasks == 0 and verify_dataset(out)["counts"]["cityscapes"] == 6


def test_kill_minus_9_then_resume(inputs, built, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cocodag.cli", "build", "--cityscapes", str(inputs[0]), "--coco", str(inputs[1]),
           "--out", str(out), *SMALL]
    env = dict(os.environ, COCODAG_TEST_TASK_DELAY="0.4")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not list(out.glob("*-00000.h5")) and time.time() - t0 < 60 and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(out.glob("*.h5")) and not (out / "manifest.json").exists()     # really interrupted mid-build
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(out.glob("*.tmp"))
    assert verify_dataset(out)["counts"] == verify_dataset(built)["counts"]
    s1 = {e["file"]: e["sha256"] for e in open_dataset(built).manifest["shards"]}
    assert {e["file"]: e["sha256"] for e in open_dataset(out).manifest["shards"]} == s1


def test_skip_bad_lists_files(inputs, tmp_path):
    import shutil

    cs = tmp_path / "cs"
    shutil.copytree(inputs[0], cs)
    bad = sorted(cs.rglob("*_leftImg8bit.png"))[2]
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(CocodagError, match=rf"{bad.name}: corrupt or truncated"):
        build_dataset(cs, inputs[1], tmp_path / "x", BuildConfig(**CFG), progress=False)
    build_dataset(cs, inputs[1], tmp_path / "y", BuildConfig(**CFG, skip_bad=True), progress=False)
    m = open_dataset(tmp_path / "y").manifest
    assert [s["file"] for s in m["skipped"]] == [str(bad)] and m["totals"]["cityscapes"] == 5


def test_real_data_build(real_data, tmp_path):
    hf = real_data / "coco/hf_transformers_sample"
    res = build_dataset(real_data / "cityscapes", None, tmp_path / "r",
                        BuildConfig(split="val", crop=64, min_object_area=0, object_scale=(0.1, 0.3), dag_samples=8,
                                    shard_size=16), coco_json=hf / "coco_annotations.txt", coco_images=hf,
                        progress=False)
    s = verify_dataset(tmp_path / "r")
    assert s["counts"]["cityscapes"] == 1 and s["counts"]["coco"] == 1 and s["counts"]["dag"] >= 1
    assert res.manifest["inputs"]["cityscapes"]["frames"] == 1


# ---------------------------------------------------------------------------------------------------- bad input
def _cli(args):
    r = CliRunner().invoke(app, args)
    out = r.output.strip()
    return r.exit_code, out


def _bad(tmp_path, inputs):
    cs, co = inputs
    bad_json = tmp_path / "bj"
    make_coco(bad_json)
    (bad_json / "annotations/instances_train2017.json").write_text("{oops")
    no_cats = tmp_path / "nc"
    make_coco(no_cats)
    p = no_cats / "annotations/instances_train2017.json"
    d = json.loads(p.read_text())
    p.write_text(json.dumps({k: v for k, v in d.items() if k != "categories"}))
    no_id = tmp_path / "ni"
    make_coco(no_id)
    p = no_id / "annotations/instances_train2017.json"
    d = json.loads(p.read_text())
    d["annotations"][3].pop("id")
    p.write_text(json.dumps(d))
    persons = tmp_path / "pe"
    make_coco(persons)
    p = persons / "annotations/instances_train2017.json"
    d = json.loads(p.read_text())
    for a in d["annotations"]:
        a["category_id"] = 1
    p.write_text(json.dumps(d))
    trunc = tmp_path / "tr"
    make_cityscapes(trunc, n=2)
    f = sorted(trunc.rglob("*_leftImg8bit.png"))[0]
    f.write_bytes(f.read_bytes()[:-200])
    size = tmp_path / "sz"
    make_cityscapes(size, n=2)
    lp = sorted(size.rglob("*_labelIds.png"))[1]
    Image.fromarray(np.zeros((100, 256), np.uint8)).save(lp)
    return [
        (["--cityscapes", str(tmp_path / "missing"), "--coco", str(co)], "missing: directory does not exist"),
        (["--cityscapes", str(co), "--coco", str(co)], "not a Cityscapes root"),
        (["--cityscapes", str(cs), "--coco", str(tmp_path / "nococo")], "nococo: directory does not exist"),
        (["--cityscapes", str(cs), "--coco", str(cs)], "not a COCO root"),
        (["--cityscapes", str(cs), "--coco", str(bad_json)], "instances_train2017.json: not valid JSON"),
        (["--cityscapes", str(cs), "--coco", str(no_cats)], "missing key 'categories'"),
        (["--cityscapes", str(cs), "--coco", str(no_id)], r"annotations[3] has no 'id' key"),
        (["--cityscapes", str(cs), "--coco", str(persons)], "no usable object left after filtering"),
        (["--cityscapes", str(trunc), "--coco", str(co)], f"{f.name}: corrupt or truncated"),
        (["--cityscapes", str(size), "--coco", str(co)], f"{lp.name}: label size 256x100 differs"),
        (["--cityscapes", str(cs), "--coco", str(co), "--crop", "200"], "--crop 200 is larger than the frame"),
        (["--cityscapes", str(cs), "--coco", str(co), "--object-scale", "2:1"], "--object-scale"),
        (["--cityscapes", str(cs), "--coco", str(co), "--paste-window", "1:x:3:4"], "--paste-window"),
        (["--cityscapes", str(cs), "--coco", str(co), "--shard-range", "9:2"], "--shard-range"),
    ]


def test_bad_inputs_one_line_errors(inputs, tmp_path):
    for i, (args, needle) in enumerate(_bad(tmp_path, inputs)):
        code, out = _cli(["build", "--out", str(tmp_path / f"o{i}"), *SMALL, *args])
        assert code == 1, (args, out)
        assert out.startswith("error:") and len(out.splitlines()) == 1 and "Traceback" not in out, out
        assert needle in out, (needle, out)


def test_choices_come_from_the_library(inputs, tmp_path):
    """--compression, --coco-background, --label-source offer exactly the library's tuples (lzf is not one of
    them); another value is a usage error naming the choices, before any work."""
    r = CliRunner().invoke(app, ["build", "--help"], env={"COLUMNS": "200"})
    for option, choices in (("--compression", COMPRESSIONS), ("--coco-background", COCO_BACKGROUNDS),
                            ("--label-source", LABEL_SOURCES)):
        assert re.search(re.escape(option) + r"\s+" + re.escape(f"<{'|'.join(choices)}>"), r.output), r.output
    assert "lzf" not in r.output
    cs, co = inputs
    for option, bad in (("--compression", "lzf"), ("--compression", "zstd"), ("--coco-background", "sky"),
                        ("--label-source", "colors")):
        code, out = _cli(["build", "--out", str(tmp_path / "o"), *SMALL, "--cityscapes", str(cs), "--coco", str(co),
                          option, bad])
        assert code == 2 and f"Invalid value for '{option}'" in out and bad in out, out
    assert not (tmp_path / "o").exists()
    # the library itself (a caller that bypasses the CLI) still refuses lzf with its reason, as one line
    with pytest.raises(CocodagError, match="--compression lzf: lzf is no longer written: h5py's LZF encoder never "
                                           "clears its hash table"):
        build_dataset(cs, co, tmp_path / "lib", BuildConfig(**CFG, compression="lzf"), progress=False)



def test_cli_refuses_other_config(inputs, tmp_path):
    base = ["build", "--cityscapes", str(inputs[0]), "--coco", str(inputs[1]), "--out", str(tmp_path / "d"), *SMALL]
    assert _cli(base)[0] == 0
    code, out = _cli([*base, "--seed", "3"])
    assert code == 1 and out.startswith("error:") and "--overwrite" in out and len(out.splitlines()) == 1
    code, out = _cli([*base, "--seed", "3", "--overwrite"])
    assert code == 0 and "complete" in out


def test_shard_range_removes_its_own_stale_temp_files(inputs, tmp_path):
    """A killed writer leaves cocodag.atomic's temp names (<shard>.h5.tmp, task-N.json.tmp): a rerun of that range
    removes them, and leaves another range's temp files alone (another array job may be writing them)."""
    out = tmp_path / "st"
    build_dataset(*inputs, out, BuildConfig(**CFG), shard_range="0:1", progress=False)
    mine = [out / "dag-00000.h5.tmp", out / "cityscapes-00000.h5.tmp", out / "progress" / "task-00000.json.tmp"]
    other = out / "dag-00001.h5.tmp"
    for p in [*mine, other]:
        p.write_bytes(b"partial")
    r = build_dataset(*inputs, out, BuildConfig(**CFG), shard_range="0:1", progress=False)
    assert r.kept_tasks == 1 and r.built_tasks == 0          # nothing rewritten: only the cleanup removes them
    assert not any(p.exists() for p in mine) and other.exists()
