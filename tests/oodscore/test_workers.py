"""`oodscore evaluate --workers N`: the files of a run on N processes are byte for byte those of one process.

Oracle: the same evaluation with ``workers=1`` (frames scored in this process, in order), compared file by file
(metrics.json / .csv, thresholds.json, the ROC / PR plots, the overlays); and a literal ``update`` loop for the
per-frame states the workers send back.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cocodag.formats.logits import LogitsWriter
from oodscore import OodscoreError
from oodscore.cli import app
from oodscore.components import ComponentMetrics
from oodscore.metrics import PixelMetrics
from oodscore.report import evaluate_logits, evaluate_score_maps

C, H, W = 5, 40, 56
ROOT = Path(__file__).resolve().parents[2]


def _logits_file(path: Path, n: int = 7, seed: int = 0) -> None:
    """Frames with an anomaly blob big enough for the obstacle track, a roi, images and an MC block."""
    rng = np.random.default_rng(seed)
    with LogitsWriter(path, C, mc_attrs={"moments_of": "logits", "moment_order": 2}) as w:
        for i in range(n):
            lab = np.zeros((H, W), np.uint8)
            r, c = rng.integers(4, H - 16), rng.integers(4, W - 20)
            lab[r:r + 12, c:c + 16] = 1
            lab[:2] = 255
            lg = rng.normal(size=(C, H, W)).astype(np.float16)
            lg[1] += (3 * (lab == 0)).astype(np.float16)
            mc = {"mean": lg.astype(np.float32), "central": rng.random((1, C, H, W)).astype(np.float32),
                  "entropy": (rng.random((H, W)) + lab).astype(np.float32)}
            roi = np.ones((H, W), np.uint8)
            roi[:, :4] = 0
            w.write(lg, lab, f"f{i}", roi=roi, image=rng.integers(0, 256, (H, W, 3), dtype=np.uint8), mc=mc)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _assert_same_files(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], name


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A logits file with SML statistics and an OODMC model fitted on it (every method can run)."""
    from oodscore.fit import fit_oodmc, fit_sml
    from oodscore.io import save_oodmc

    d = tmp_path_factory.mktemp("workers")
    _logits_file(d / "t.h5")
    fit_sml(d / "t.h5", progress=False).save(d / "sml.json")
    save_oodmc(fit_oodmc(d / "t.h5", progress=False, svm_points_num=400, random_state=0), d / "m.joblib")
    return d


@pytest.mark.parametrize("bins,counts", [(None, (2, 3)), (16, (3,))])
def test_workers_give_the_files_of_one_process(fitted, tmp_path, bins, counts):
    d = fitted
    methods = ["msp", "maxlogit", "entropy", "sml", "vde", "oodmc"]
    kw = dict(sml_stats=d / "sml.json", oodmc_model=d / "m.joblib", components="obstacle", region="road",
              bins=bins, max_overlays=3, progress=False)
    one = evaluate_logits(d / "t.h5", methods, tmp_path / "one", workers=1, **kw)
    for n in counts:
        many = evaluate_logits(d / "t.h5", methods, tmp_path / f"w{n}", workers=n, **kw)
        assert many.results == one.results and many.thresholds == one.thresholds
        _assert_same_files(tmp_path / "one", tmp_path / f"w{n}")
    doc = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert set(doc) == set(methods) and all("component_mean_f1" in r for r in doc.values())
    assert len(list((tmp_path / "one" / "overlays").iterdir())) == 3 * len(methods)


def test_workers_with_given_thresholds(fitted, tmp_path):
    d = fitted
    evaluate_logits(d / "t.h5", ["msp", "entropy"], tmp_path / "val", max_overlays=0, progress=False)
    kw = dict(threshold_from=tmp_path / "val" / "thresholds.json", threshold_kind="tpr95", max_overlays=2,
              progress=False)
    evaluate_logits(d / "t.h5", ["msp", "entropy"], tmp_path / "one", workers=1, **kw)
    evaluate_logits(d / "t.h5", ["msp", "entropy"], tmp_path / "two", workers=2, **kw)
    _assert_same_files(tmp_path / "one", tmp_path / "two")


def _evalset(root: Path, n: int = 6, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    maps = root / "maps"
    for d in ("images", "labels", "maps"):
        (root / d).mkdir(parents=True)
    for i in range(n):
        lab = rng.choice([0, 0, 0, 0, 255], size=(H, W)).astype(np.uint8)
        lab[10:22, 12:30] = 1
        s = (rng.normal(size=(H, W)) + 1.5 * (lab == 1)).astype(np.float32)
        s[0, :6] = s[1, :6]                                        # ties
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"n{i}.png")
        Image.fromarray(lab).save(root / "labels" / f"n{i}.png")
        np.save(maps / f"n{i}.npy", s)
    return maps


def test_workers_on_score_maps(tmp_path):
    maps = _evalset(tmp_path / "set")
    kw = dict(name="mine", components="anomaly", max_overlays=2, progress=False)
    one = evaluate_score_maps(maps, f"standard:{tmp_path / 'set'}", tmp_path / "one", workers=1, **kw)
    two = evaluate_score_maps(maps, f"standard:{tmp_path / 'set'}", tmp_path / "two", workers=2, **kw)
    assert two.results == one.results
    _assert_same_files(tmp_path / "one", tmp_path / "two")
    res = CliRunner().invoke(app, ["evaluate", "--scores", str(maps), "--dataset", f"standard:{tmp_path / 'set'}",
                                   "--out", str(tmp_path / "cli"), "--name", "mine", "--components", "anomaly",
                                   "--max-overlays", "2", "--workers", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    _assert_same_files(tmp_path / "one", tmp_path / "cli")


def test_worker_errors_are_the_one_process_errors(tmp_path):
    maps = _evalset(tmp_path / "set")
    bad = np.load(maps / "n3.npy")
    bad[20, 20] = np.nan                                           # on an anomaly pixel: not void
    np.save(maps / "n3.npy", bad)
    np.save(maps / "n5.npy", np.full((H, W), np.inf, np.float32))  # a later frame fails too: frame order wins
    msgs = []
    for workers in (1, 2):
        with pytest.raises(OodscoreError) as e:
            evaluate_score_maps(maps, f"standard:{tmp_path / 'set'}", tmp_path / f"r{workers}", workers=workers,
                                progress=False)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and "frame 'n3'" in msgs[0] and "non-finite" in msgs[0]
    res = CliRunner().invoke(app, ["evaluate", "--scores", str(maps), "--dataset", f"standard:{tmp_path / 'set'}",
                                   "--out", str(tmp_path / "c"), "--workers", "0"])
    assert res.exit_code == 1 and res.output.strip().splitlines() == ["error: --workers 0: expected at least 1"]
    with pytest.raises(OodscoreError, match="--workers 0"):
        evaluate_score_maps(maps, f"standard:{tmp_path / 'set'}", tmp_path / "r", workers=0)


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(p.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_evaluation(tmp_path):
    _logits_file(tmp_path / "t.h5", n=40)
    code = ("from oodscore.report import evaluate_logits; "
            f"evaluate_logits({str(tmp_path / 't.h5')!r}, ['msp'], {str(tmp_path / 'rep')!r}, workers=2, "
            "progress=False)")
    env = {**os.environ, "OODSCORE_TEST_FRAME_DELAY": "0.5", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:   # the pool's workers (and its resource tracker)
            time.sleep(0.2)
            workers = [p for p in _children(proc.pid) if "spawn_main" in (Path("/proc") / str(p) / "cmdline")
                       .read_bytes().decode(errors="replace")]
            assert proc.poll() is None, "the evaluation ended before it could be killed"
        assert len(workers) >= 2
        time.sleep(1.0)                                              # mid-run: frames in flight
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers)
        assert not (tmp_path / "rep" / "metrics.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


# ----------------------------------------------------------------------------- the pieces the workers use
def _batches(seed: int, k: int = 6):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        n = int(rng.integers(50, 400))
        y = (rng.random(n) < 0.3).astype(np.uint8)
        y[rng.random(n) < 0.1] = 255
        s = np.round(rng.normal(size=n) + y, 1 + i % 3).astype([np.float16, np.float32, np.float64][i % 3])
        out.append((s, y))
    return out


@pytest.mark.parametrize("edge_samples", [300, 120, 10_000])
@pytest.mark.parametrize("bins", [None, 8])
def test_frame_states_merged_in_order_equal_updates(bins, edge_samples):
    batches = _batches(3)
    ref = PixelMetrics(bins=bins, edge_samples=edge_samples)
    for s, y in batches:
        ref.update(s, y)
    # states made ahead of time, by copies that lag behind the accumulator (as workers do): binned copies made
    # before the edges were fixed hold their scores unbinned (or fix their own edges from them: 120 samples), and
    # are binned when merged
    acc = PixelMetrics(bins=bins, edge_samples=edge_samples)
    pending = []
    for s, y in batches:
        state = acc.empty_copy()
        state.update(s, y)
        pending.append(pickle.loads(pickle.dumps(state)))      # as it comes back from a worker
        if len(pending) == 3:
            acc.merge(pending.pop(0))
    for p in pending:
        acc.merge(p)
    assert acc.compute() == ref.compute()
    assert acc.curves(max_points=50)["fpr"].tolist() == ref.curves(max_points=50)["fpr"].tolist()
    if bins:
        assert np.array_equal(acc.edges, ref.edges)
        other = PixelMetrics(bins=bins, edge_samples=10)
        other.update(*batches[0])
        state = other.empty_copy()
        state.update(*batches[1])
        with pytest.raises(OodscoreError, match="quantile edges"):
            acc.merge(state)
    with pytest.raises(OodscoreError, match="bins differ"):
        acc.merge(PixelMetrics(bins=None if bins else 4))


def test_component_frame_states_merged_in_order_equal_updates():
    rng = np.random.default_rng(4)
    ref, acc = ComponentMetrics(0.5, track="obstacle"), ComponentMetrics(0.5, track="obstacle")
    for _ in range(5):
        y = np.zeros((30, 30), np.uint8)
        y[5:15, 5:15] = 1
        s = rng.normal(size=(30, 30)) + y
        ref.update(s, y)
        state = acc.empty_copy()
        state.update(s, y)
        acc.merge(state)
    assert acc.compute() == ref.compute()


_PROBE_MODULE = '''
import os
import cv2
import torch
from threadpoolctl import threadpool_info


class Source:
    def open(self, stack):
        return (lambda i: (f"f{i}", None, {}, None)), None


class Task:
    def run(self, item, describe):
        return {"torch": torch.get_num_threads(), "cv2": cv2.getNumThreads(),
                "pools": sorted({p["num_threads"] for p in threadpool_info()}),
                "env": [v for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if v in os.environ]}
'''


def test_workers_cap_their_thread_pools_without_touching_the_environment(tmp_path):
    """Each of N workers gets cpu_count // N threads in every pool (threadpoolctl, torch, cv2); os.environ is left
    as it was."""
    (tmp_path / "probe_mod.py").write_text(_PROBE_MODULE)
    code = ("import json, probe_mod; from oodscore.workers import WorkerFrames\n"
            "if __name__ == '__main__':\n"
            "    with WorkerFrames(probe_mod.Source(), 2, 4) as w:\n"
            "        print(json.dumps(list(w.results(lambda i: probe_mod.Task(), 4))))\n")
    (tmp_path / "probe.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{tmp_path}"
    res = subprocess.run([sys.executable, "probe.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    threads = max(1, (os.cpu_count() or 1) // 2)
    for r in json.loads(res.stdout.strip().splitlines()[-1]):
        assert r["torch"] == threads and r["cv2"] == threads and r["env"] == []
        assert r["pools"] in ([threads], [])
