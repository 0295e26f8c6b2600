"""cocodag build under concurrency and faults (issue 9): one writer per folder, workers that die with their build,
reruns that repair, a full disk as one line, bad COCO annotations and damaged manifests as one line."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from _fixtures import SMALL, make_cityscapes, make_coco
from typer.testing import CliRunner

from cocodag.build import BuildConfig, _outdir, _run, build_dataset
from cocodag.build._tasks import TASK_DELAY_ENV
from cocodag.cli import app
from cocodag.errors import CocodagError
from cocodag.formats.shards import open_dataset, sha256_file
from cocodag.lock import OutputLock, OutputLockedError
from cocodag.verify import verify_dataset

ROOT = Path(__file__).resolve().parents[2]
CFG = dict(crop=64, min_object_area=200, shard_size=8)          # = SMALL on the command line
TRIES = 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    t = tmp_path_factory.mktemp("inputs")
    make_cityscapes(t / "cs", n=6)
    make_coco(t / "coco")
    return t / "cs", t / "coco"


@pytest.fixture(scope="module")
def solo(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("solo") / "ds"
    build_dataset(*inputs, out, BuildConfig(**CFG), progress=False)
    return out


def _digest(out: Path):
    """What must equal a solo build: every shard's sha256, the manifest without library versions, the records."""
    m = json.loads((out / "manifest.json").read_text())
    m.pop("versions")
    records = {p.name: json.loads(p.read_text()) for p in sorted((out / "progress").glob("task-*.json"))}
    return {p.name: sha256_file(p) for p in sorted(out.glob("*.h5"))}, m, records


def _cmd(inputs, out, *extra):
    return [sys.executable, "-m", "cocodag.cli", "build", "--cityscapes", str(inputs[0]), "--coco", str(inputs[1]),
            "--out", str(out), *SMALL, *extra]


def _env(delay: float | None = None, **extra):
    env = dict(os.environ, **extra)
    env.pop(TASK_DELAY_ENV, None)
    if delay:
        env[TASK_DELAY_ENV] = str(delay)
    return env


def _start(cmd, env):
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in stderr, stderr
    return lines[0]


def _cli(args):
    r = CliRunner().invoke(app, args)
    return r.exit_code, r.output.strip()


# ------------------------------------------------------------------------------------------------ one writer per folder
def test_two_builds_into_one_folder(inputs, solo, tmp_path):
    """Started 0.2 s apart: one is refused with one line naming the holder, the other equals a solo build."""
    for i in range(TRIES):
        out = tmp_path / f"d{i}"
        first = _start(_cmd(inputs, out), _env(0.3))
        time.sleep(0.2)
        second = _start(_cmd(inputs, out), _env(0.3))
        results = {p: p.communicate(timeout=120) for p in (first, second)}
        codes = sorted(p.returncode for p in results)
        assert codes == [0, 1], {p.returncode: r for p, r in results.items()}
        winner, loser = sorted(results, key=lambda p: p.returncode)
        line = _one_error_line(results[loser][1])
        assert f"--out {out}: in use by another job (pid {winner.pid} on " in line, line
        assert "complete" in results[winner][0]
        assert _digest(out) == _digest(solo), f"try {i}"


def test_two_shard_range_jobs_at_once_then_merge(inputs, solo, tmp_path):
    """Overlapping ranges run at once (each task built exactly once); the merge step gives the solo build."""
    n = open_dataset(solo).manifest["num_tasks"]
    out = tmp_path / "ranges"
    a = _start(_cmd(inputs, out, "--shard-range", f"0:{n - 2}"), _env(0.3))
    time.sleep(0.2)
    b = _start(_cmd(inputs, out, "--shard-range", f"2:{n}"), _env(0.3))
    outs = [p.communicate(timeout=120) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    built = [int(o.split("tasks built ")[1].split(",")[0]) for o, _ in outs]
    assert sum(built) == n, outs            # the overlap (tasks 2..n-3) was built by one job only
    merge = subprocess.run(_cmd(inputs, out), cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert merge.returncode == 0 and "complete" in merge.stdout and "tasks built 0" in merge.stdout, merge
    assert _digest(out) == _digest(solo)
    verify_dataset(out)


def test_full_build_and_range_jobs_exclude_each_other(inputs, tmp_path, monkeypatch):
    out = tmp_path / "x"
    out.mkdir()
    with OutputLock(out, shared=True):            # a range job is filling the folder
        with pytest.raises(OutputLockedError, match="in use by another job"):
            build_dataset(*inputs, out, BuildConfig(**CFG), progress=False)
        r = build_dataset(*inputs, out, BuildConfig(**CFG), shard_range="0:2", progress=False)   # ranges share
        assert r.manifest is None and r.built_tasks == 2
    monkeypatch.setattr(_run, "_SHARED_GRACE_S", 0.3)
    with OutputLock(out):                         # a full build (or the merge step) holds it
        t0 = time.monotonic()
        with pytest.raises(OutputLockedError, match=rf"pid {os.getpid()} on "):
            build_dataset(*inputs, out, BuildConfig(**CFG), shard_range="2:4", progress=False)
        assert time.monotonic() - t0 >= 0.3       # a range job retried for its grace period first
    with pytest.raises(CocodagError, match="--overwrite cannot be combined with --shard-range"):
        build_dataset(*inputs, out, BuildConfig(**CFG), shard_range="0:2", overwrite=True, progress=False)


def test_last_range_job_writes_the_manifest_alone(inputs, solo, tmp_path):
    out = tmp_path / "r"
    n = open_dataset(solo).manifest["num_tasks"]
    assert build_dataset(*inputs, out, BuildConfig(**CFG), shard_range=f"0:{n - 1}", progress=False).manifest is None
    with OutputLock(out, shared=True):            # another range job still runs: this one leaves it to the last
        r = build_dataset(*inputs, out, BuildConfig(**CFG), shard_range=f"{n - 1}:{n}", progress=False)
        assert r.manifest is None and not (out / "manifest.json").exists()
    r = build_dataset(*inputs, out, BuildConfig(**CFG), shard_range=f"{n - 1}:{n}", progress=False)
    assert r.manifest is not None and r.kept_tasks == 1 and _digest(out) == _digest(solo)


# ------------------------------------------------------------------------------------------------ workers die with it
def _snapshot(folder: Path):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _processes_with(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and d.name != str(os.getpid()):
            try:
                if marker.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_kill_minus_9_with_workers_leaves_nothing_writing(inputs, solo, tmp_path):
    out = tmp_path / "killed"
    marker = f"cocodag-kill-test-{os.getpid()}"
    # No pipes: the workers of the old code inherited them, so reading them would wait for the orphans to finish.
    proc = subprocess.Popen(_cmd(inputs, out, "--workers", "2"), env=_env(0.5, COCODAG_TEST_MARK=marker), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not list(out.glob("*.h5")) and time.time() - t0 < 60 and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()            # really interrupted mid-build
    time.sleep(0.6)                                        # workers notice within 0.2 s
    before = _snapshot(out)
    time.sleep(3.0)
    assert _snapshot(out) == before, "files under --out changed after the build was killed"
    assert _processes_with(marker) == [], "a worker of the killed build still runs"
    done = subprocess.run(_cmd(inputs, out, "--workers", "2"), cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(out.rglob("*.tmp")) and _digest(out) == _digest(solo)


def test_orphan_check_is_a_no_op_in_the_build_process():
    from cocodag.workers import exit_if_orphaned

    exit_if_orphaned(os.getpid())               # the sequential writer thread runs in the build process
    exit_if_orphaned(os.getppid())              # a worker whose build still runs


# ------------------------------------------------------------------------------------------------ reruns repair
def test_flipped_byte_then_same_command_repairs(inputs, solo, tmp_path, monkeypatch):
    out = tmp_path / "flip"
    shutil.copytree(solo, out)                             # the same files (mtimes differ: cache entries re-checked)
    build_dataset(*inputs, out, BuildConfig(**CFG), progress=False)
    shard = out / "dag-00002.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    code, msg = _cli(["verify", str(out)])
    assert code == 1 and f"{shard}: sha256 differs" in msg and "rerunning the same `cocodag build` command" in msg
    r = build_dataset(*inputs, out, BuildConfig(**CFG), progress=False)
    assert r.built_tasks == 1 and r.kept_tasks == r.total_tasks - 1
    assert _digest(out) == _digest(solo)
    verify_dataset(out)
    calls = []
    real = _outdir.sha256_file
    monkeypatch.setattr(_outdir, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    build_dataset(*inputs, out, BuildConfig(**CFG), progress=False)    # may re-hash entries of the same clock tick
    calls.clear()
    again = build_dataset(*inputs, out, BuildConfig(**CFG), progress=False)
    assert again.built_tasks == 0 and calls == []          # a clean rerun reads no shard: the sha cache answers


def test_damaged_sha_cache_only_costs_rehashing(inputs, solo, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(solo, out)
    (out / "progress" / "sha-cache.json").write_text("{trunc")
    r = build_dataset(*inputs, out, BuildConfig(**CFG), progress=False)
    assert r.built_tasks == 0 and json.loads((out / "progress" / "sha-cache.json").read_text())["files"]


# ------------------------------------------------------------------------------------------------ disk full
def _fill(mnt: Path, free_pages: int) -> None:
    """Leave exactly ``free_pages`` free blocks on the small tmpfs."""
    st = os.statvfs(mnt)
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * ((st.f_bavail - free_pages) * st.f_frsize))
    assert os.statvfs(mnt).f_bavail == free_pages


def _write_order(solo: Path, block: int) -> list[tuple[str, int]]:
    """(name, blocks) of the files a one-worker build writes, in order: the lock file (a line of holder info), each
    task's shards then its record, the sha cache, the manifest."""
    def pages(p: Path) -> int:
        return max(1, math.ceil(p.stat().st_size / block))

    order = [(".lock", 1)]
    for rp in sorted((solo / "progress").glob("task-*.json")):
        order += [(e["file"], pages(solo / e["file"])) for e in json.loads(rp.read_text())["entries"]]
        order.append((rp.name, pages(rp)))
    return order + [(n, pages(solo / n)) for n in ("progress/sha-cache.json", "manifest.json")]


def test_disk_full_is_one_line_and_leaves_nothing_half_written(inputs, solo, small_fs):
    mnt, _ = small_fs
    order = _write_order(solo, os.statvfs(mnt).f_frsize)
    solo_files = _digest(solo)[0]
    build = ["build", "--cityscapes", str(inputs[0]), "--coco", str(inputs[1]), *SMALL]
    for what, i in {"shard": 1, "record": 3, "manifest": len(order) - 1}.items():
        out = mnt / what
        for p in mnt.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        _fill(mnt, sum(n for _, n in order[:i + 1]) - 1)          # room for every write before order[i], not it
        code, msg = _cli([*build, "--out", str(out)])
        assert code == 1 and msg.startswith("error: No space left on device: ") and len(msg.splitlines()) == 1, msg
        assert f"{out}/" in msg and Path(order[i][0]).name in msg, (what, msg)
        assert not list(out.rglob("*.tmp")) and not (out / "manifest.json").exists()
        for p in out.glob("*.h5"):                         # nothing half-written under a final name
            assert sha256_file(p) == solo_files[p.name], p
        for rp in (out / "progress").glob("task-*.json"):
            assert json.loads(rp.read_text()) == json.loads((solo / "progress" / rp.name).read_text())
        (mnt / "filler").unlink()
        code, msg = _cli([*build, "--out", str(out)])
        assert code == 0 and "complete" in msg, msg
        assert _digest(out) == _digest(solo)


def test_out_is_checked_before_any_work(inputs, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for out, needle in [(f, "is an existing file, expected a folder"), (f / "sub", "is a file, so nothing can be")]:
        code, msg = _cli(["build", "--cityscapes", str(inputs[0]), "--coco", str(inputs[1]), "--out", str(out),
                          *SMALL])
        assert code == 1 and msg.startswith("error: --out ") and needle in msg and len(msg.splitlines()) == 1, msg


# ------------------------------------------------------------------------------------------------ bad COCO annotations
def _add_annotations(coco_root: Path, image_id: int, segs: list, area: float = 500.0) -> list[int]:
    jp = coco_root / "annotations" / "instances_train2017.json"
    d = json.loads(jp.read_text())
    ids = []
    for seg in segs:
        ids.append(max(a["id"] for a in d["annotations"]) + 1)
        d["annotations"].append({"id": ids[-1], "image_id": image_id, "category_id": 17, "segmentation": seg,
                                 "area": area, "bbox": [0, 0, 1, 1], "iscrowd": 0})
    jp.write_text(json.dumps(d))
    return ids


def _arrays(out: Path):
    res = {}
    for p in sorted(out.glob("*.h5")):
        with h5py.File(p) as f:
            res[p.name] = (f["image"][()], f["label"][()])
    return res


def test_degenerate_polygons_one_line_or_skipped(inputs, solo, tmp_path):
    coco = tmp_path / "coco"
    shutil.copytree(inputs[1], coco)
    ids = _add_annotations(coco, 100, [[[10.0, 10.0, 40.0, 12.0]], [[]], []])   # 2 points, [[]], []
    jp = coco / "annotations" / "instances_train2017.json"
    base = ["build", "--cityscapes", str(inputs[0]), "--coco", str(coco), *SMALL]
    code, msg = _cli([*base, "--out", str(tmp_path / "a")])
    assert code == 1 and len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
    assert msg.startswith(f"error: {jp}: annotation {ids[0]} (image 100): degenerate polygon") and "--skip-bad" in msg
    code, msg = _cli([*base, "--out", str(tmp_path / "b"), "--skip-bad"])
    assert code == 0 and "complete" in msg, msg
    m = open_dataset(tmp_path / "b").manifest
    assert [s["file"] for s in m["skipped"]] == [str(jp)] * 3
    assert [s["reason"].split(":")[0] for s in m["skipped"]] == [f"annotation {i} (image 100)" for i in ids]
    assert m["coco_filter"]["bad_annotations"] == 3
    a, b = _arrays(solo), _arrays(tmp_path / "b")          # the skipped annotations covered no pixel
    assert a.keys() == b.keys() and all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k]))


def test_every_object_bad_still_fails_clearly(tmp_path):
    coco = tmp_path / "coco"
    make_coco(coco, extras=False)
    jp = coco / "annotations" / "instances_train2017.json"
    d = json.loads(jp.read_text())
    for a in d["annotations"]:                     # the big object of each image lies outside it; the small one stays
        if a["area"] >= 200:
            a["segmentation"] = [[v + 1000 for v in a["segmentation"][0]]]
    jp.write_text(json.dumps(d))
    cs = tmp_path / "cs"
    make_cityscapes(cs, n=2)
    code, msg = _cli(["build", "--cityscapes", str(cs), "--coco", str(coco), "--out", str(tmp_path / "o"), *SMALL,
                      "--skip-bad"])
    assert code == 1 and len(msg.splitlines()) == 1, msg
    assert f"{jp}: no usable object left after filtering" in msg and "4 bad annotations skipped" in msg, msg


def test_empty_object_mask_names_file_and_annotation(inputs, tmp_path):
    coco = tmp_path / "coco"
    shutil.copytree(inputs[1], coco)
    jp = coco / "annotations" / "instances_train2017.json"
    outside = _add_annotations(coco, 101, [[[200.0, 10.0, 230.0, 10.0, 230.0, 40.0]]], area=900.0)[0]
    base = ["build", "--cityscapes", str(inputs[0]), "--coco", str(coco), *SMALL]
    code, msg = _cli([*base, "--out", str(tmp_path / "a")])
    assert code == 1 and len(msg.splitlines()) == 1, msg
    assert msg.startswith(f"error: {jp}: annotation {outside} (image 101): its polygon lies outside") and \
        "--skip-bad" in msg, msg
    # A sliver inside the image whose JSON area passes the filter: the mask is empty once rasterized (in a worker).
    d = json.loads(jp.read_text())
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] == 102 or a["id"] == outside]
    d["annotations"][-1]["segmentation"] = [[20.0, 20.0, 20.3, 20.1, 20.1, 20.3]]
    jp.write_text(json.dumps(d))
    cfg = BuildConfig(**{**CFG, "streams": ("dag",), "min_object_area": 0})
    with pytest.raises(CocodagError, match=rf"{jp}: annotation {outside} \(image 101, 000000000101.jpg\): its "
                                           r"polygon gives an empty mask; fix or remove it, or use --skip-bad"):
        build_dataset(inputs[0], coco, tmp_path / "c", cfg, progress=False)
    build_dataset(inputs[0], coco, tmp_path / "d", BuildConfig(**{**vars(cfg), "skip_bad": True}), progress=False)
    m = open_dataset(tmp_path / "d").manifest
    assert m["skipped"] and all(s["file"] == str(jp) and f"annotation {outside} " in s["reason"] for s in m["skipped"])
    verify_dataset(tmp_path / "d")


@pytest.mark.parametrize("key,value", [("area", "big"), ("image_id", "x"), ("category_id", [1])])
def test_non_number_field_names_file_and_annotation(inputs, tmp_path, key, value):
    coco = tmp_path / "coco"
    shutil.copytree(inputs[1], coco)
    jp = coco / "annotations" / "instances_train2017.json"
    d = json.loads(jp.read_text())
    d["annotations"][2][key] = value
    jp.write_text(json.dumps(d))
    code, msg = _cli(["build", "--cityscapes", str(inputs[0]), "--coco", str(coco), "--out", str(tmp_path / "o"),
                      *SMALL])
    assert code == 1 and len(msg.splitlines()) == 1, msg
    assert msg == (f"error: {jp}: annotations[2] (annotation id {d['annotations'][2]['id']}): {key!r} must be a "
                   f"number, got {value!r}; fix the file"), msg


# ------------------------------------------------------------------------------------------------ damaged manifests
def test_truncated_manifest_is_reported_as_such(inputs, solo, tmp_path):
    out = tmp_path / "t"
    shutil.copytree(solo, out)
    mp = out / "manifest.json"
    mp.write_text(mp.read_text()[:200])
    code, msg = _cli(["verify", str(out)])
    assert code == 1 and f"{mp}: corrupt or truncated manifest (not valid JSON" in msg, msg
    r = build_dataset(*inputs, out, BuildConfig(**CFG), progress=False)   # the records say whose it is: rewritten
    assert r.built_tasks == 0 and _digest(out) == _digest(solo)
    mp.write_text(mp.read_text()[:200])
    shutil.rmtree(out / "progress")
    code, msg = _cli(["build", "--cityscapes", str(inputs[0]), "--coco", str(inputs[1]), "--out", str(out), *SMALL])
    assert code == 1 and len(msg.splitlines()) == 1 and "another config" not in msg, msg
    assert "manifest.json cannot be read" in msg and "corrupt or truncated manifest" in msg and "--overwrite" in msg


def test_manifest_counts_that_disagree_with_the_shards_are_refused(solo, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(solo, out)
    mp = out / "manifest.json"
    m = json.loads(mp.read_text())
    m["shards"][0]["num_samples"] += 3
    m["totals"][m["shards"][0]["kind"]] += 3
    mp.write_text(json.dumps(m))
    e = m["shards"][0]
    with pytest.raises(CocodagError, match=rf"{e['file']}: the shard holds {e['num_samples'] - 3} {e['kind']} samples "
                                           rf"but manifest.json says {e['num_samples']} {e['kind']}"):
        open_dataset(out, verify_checksums=False)
    m["totals"]["dag"] -= 3
    mp.write_text(json.dumps(m))
    with pytest.raises(CocodagError, match=r"totals\[dag\] = \d+ but its shard entries add up to"):
        open_dataset(out)
    m["shards"][0].pop("sha256")
    mp.write_text(json.dumps(m))
    code, msg = _cli(["verify", str(out)])
    assert code == 1 and r"shards[0] is malformed" in msg and len(msg.splitlines()) == 1, msg
