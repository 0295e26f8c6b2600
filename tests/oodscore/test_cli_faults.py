"""`oodscore` under faults (issue 9): an exclusive report folder, bad evaluation files and disk full -> one line.

Every case is run through the real CLI (typer's runner, in process) and must end with exactly one ``error:`` line,
exit code 1 and no traceback; the message must name the file (and frame / method / value where there is one).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cocodag.formats.logits import LogitsFile, LogitsWriter
from oodscore.cli import app

runner = CliRunner()
C, H, W = 4, 20, 28


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(res, *matches: str) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    err = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, res.output
    for m in matches:
        assert m in err[0], err[0]
    return err[0]


def _logits(path, rng, n=3, *, mc=False, images=False, c=C, h=H, w=W):
    with LogitsWriter(path, c, mc_attrs={"moments_of": "logits", "moment_order": 2}) as wr:
        for i in range(n):
            lab = np.zeros((h, w), np.uint8)
            lab[h // 4: h // 2, w // 4: w // 2] = 1
            lg = rng.normal(size=(c, h, w)).astype(np.float16)
            lg[1] += (3 * (lab == 0)).astype(np.float16)
            m = None
            if mc:
                m = {"mean": lg.astype(np.float32), "central": rng.random((1, c, h, w)).astype(np.float32),
                     "entropy": (rng.random((h, w)) + lab).astype(np.float32)}
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if images else None
            wr.write(lg, lab, f"f{i}", mc=m, image=img)
    return path


def _edit(path, dataset, frame, fn):
    """Change one frame of one dataset in place (as a damaged or hand-made file would be)."""
    with h5py.File(path, "r+") as f:
        a = f[dataset][frame]
        f[dataset][frame] = fn(a)


@pytest.fixture
def logits_file(tmp_path):
    return _logits(tmp_path / "t.h5", np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ exclusive output
def _hold_in_child(path, ready):
    code = textwrap.dedent(f"""
        import time, pathlib
        from cocodag.lock import OutputLock
        OutputLock({str(path)!r}).acquire()
        pathlib.Path({str(ready)!r}).write_text("held")
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(300):
        if ready.exists():
            return p
        time.sleep(0.05)
    p.kill()
    raise AssertionError("child never took the lock")


def test_evaluate_refused_while_another_job_holds_the_report_folder(tmp_path, logits_file):
    out = tmp_path / "rep"
    out.mkdir()
    child = _hold_in_child(out, tmp_path / "ready")
    try:
        for args in (("--logits", logits_file, "--method", "msp"),):
            res = _run("evaluate", *args, "--out", out, "--no-progress")
            _one_line_error(res, f"--out {out}: in use by another job (pid {child.pid} on ", "choose another --out")
        assert not (out / "metrics.json").exists()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    res = _run("evaluate", "--logits", logits_file, "--method", "msp", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "is gone; taking over" in res.output and (out / "metrics.json").is_file()


def test_scores_mode_holds_the_lock_too(tmp_path):
    rng = np.random.default_rng(1)
    root, maps = tmp_path / "set", tmp_path / "maps"
    for d in ("images", "labels"):
        (root / d).mkdir(parents=True)
    maps.mkdir()
    lab = np.zeros((H, W), np.uint8)
    lab[3:9, 4:12] = 1
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(lab).save(root / "labels" / "a.png")
    np.save(maps / "a.npy", rng.normal(size=(H, W)).astype(np.float32) + lab)
    out = tmp_path / "rep"
    out.mkdir()
    child = _hold_in_child(out, tmp_path / "ready")
    try:
        res = _run("evaluate", "--scores", maps, "--dataset", f"standard:{root}", "--out", out, "--no-progress")
        _one_line_error(res, f"--out {out}: in use by another job (pid {child.pid} on ")
    finally:
        child.kill()
        child.wait()
    res = _run("evaluate", "--scores", maps, "--dataset", f"standard:{root}", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output


def test_out_is_checked_before_any_frame_is_scored(tmp_path, logits_file, monkeypatch):
    def no_frames(*a, **k):
        raise AssertionError("a frame was read before --out was checked")

    monkeypatch.setattr(LogitsFile, "frame", no_frames)
    (tmp_path / "afile").write_text("x")
    cases = [(tmp_path / "afile", "is an existing file, expected a folder"),
             (tmp_path / "afile" / "rep", "is a file, so nothing can be created under it")]
    for out, match in cases:
        res = _run("evaluate", "--logits", logits_file, "--method", "msp", "--out", out, "--no-progress")
        _one_line_error(res, f"--out {out}", match)


def test_read_only_out(small_fs, logits_file):
    mnt, _ = small_fs
    r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.decode().strip()}")
    res = _run("evaluate", "--logits", logits_file, "--method", "msp", "--out", mnt / "rep", "--no-progress")
    _one_line_error(res, f"--out {mnt / 'rep'}", "Read-only file system")


def test_disk_full_while_writing_the_report(small_fs, tmp_path):
    """A report with many big overlays cannot fit in 1 MiB: one line, exit 1, no temp file or half file left."""
    mnt, _ = small_fs
    path = _logits(tmp_path / "big.h5", np.random.default_rng(2), n=8, images=True, h=192, w=384)
    out = mnt / "rep"
    res = _run("evaluate", "--logits", path, "--method", "msp", "--method", "maxlogit", "--method", "entropy",
               "--out", out, "--max-overlays", 8, "--no-progress")
    _one_line_error(res, f"No space left on device: {out}")
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert not [p for p in left if ".tmp" in p], left
    if (out / "metrics.json").exists():              # what is there under a final name is complete
        json.loads((out / "metrics.json").read_text())
    # the lock was released: the same command elsewhere works
    res = _run("evaluate", "--logits", path, "--method", "msp", "--out", tmp_path / "rep", "--max-overlays", 1,
               "--no-progress")
    assert res.exit_code == 0, res.output


def _fill(folder):
    """Fill the file system of ``folder`` to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for block in (1 << 16, 4096, 1):
            try:
                while os.write(fd, b"\0" * block):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("command", ["fit-sml", "fit-oodmc"])
def test_disk_full_while_writing_a_fitted_file(small_fs, tmp_path, monkeypatch, command):
    """The disk fills up during the fit (after the up-front check of --out): one line, nothing under the name."""
    import oodscore.fit

    mnt, _ = small_fs
    path = _logits(tmp_path / "train.h5", np.random.default_rng(3), n=2, mc=True)
    name = command.replace("-", "_")
    real = getattr(oodscore.fit, name)

    def fit_then_fill(*a, **k):
        res = real(*a, **k)
        _fill(mnt)
        return res

    monkeypatch.setattr(oodscore.fit, name, fit_then_fill)
    out = mnt / "s" / "model.out"
    res = _run(command, "--logits", path, "--out", out, *(("--svm-points-num", 100) if command == "fit-oodmc" else ()))
    _one_line_error(res, f"No space left on device: {out}")
    assert sorted(p.name for p in (mnt / "s").iterdir()) == []


def test_disk_full_before_the_fit(small_fs, tmp_path):
    mnt, _ = small_fs
    path = _logits(tmp_path / "train.h5", np.random.default_rng(3), n=2)
    (mnt / "s").mkdir()
    _fill(mnt)
    res = _run("fit-sml", "--logits", path, "--out", mnt / "s" / "sml.json")
    _one_line_error(res, f"--out {mnt / 's' / 'sml.json'}: cannot write in", "No space left on device")


# ------------------------------------------------------------------------------------------ label values
def test_label_value_7_in_logits_is_one_line(tmp_path, logits_file):
    _edit(logits_file, "label", 1, lambda a: np.where(a == 1, 7, a))
    res = _run("evaluate", "--logits", logits_file, "--method", "msp", "--out", tmp_path / "r", "--no-progress")
    _one_line_error(res, str(logits_file), "frame 1 ('f1')", "label values [7] not in 0/1/255")
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_label_value_7_in_oodmc_training_file(tmp_path):
    path = _logits(tmp_path / "train.h5", np.random.default_rng(4), n=2, mc=True)
    _edit(path, "label", 0, lambda a: np.where(a == 0, 200, a))
    res = _run("fit-oodmc", "--logits", path, "--out", tmp_path / "m.joblib", "--svm-points-num", 100)
    _one_line_error(res, str(path), "frame 0 ('f0')", "label values [200] not in 0/1/255")
    assert not (tmp_path / "m.joblib").exists()


def test_label_value_outside_convention_in_a_scores_set(tmp_path):
    root, maps = tmp_path / "set", tmp_path / "maps"
    for d in ("images", "labels"):
        (root / d).mkdir(parents=True)
    maps.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(root / "labels" / "a.png")
    np.save(maps / "a.npy", np.zeros((H, W), np.float32))
    res = _run("evaluate", "--scores", maps, "--dataset", f"standard:{root}", "--out", tmp_path / "r")
    _one_line_error(res, str(root / "labels" / "a.png"), "label values [7] not in 0/1/255")


# ------------------------------------------------------------------------------------------ NaN / inf
@pytest.mark.parametrize("method", ["msp", "maxlogit", "entropy"])
def test_nan_logits_name_file_and_frame(tmp_path, logits_file, method):
    _edit(logits_file, "logits", 2, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a))
    res = _run("evaluate", "--logits", logits_file, "--method", method, "--out", tmp_path / "r", "--no-progress")
    _one_line_error(res, f"{logits_file}: frame 2 ('f2'), {method}:", "NaN")


def test_nan_logits_in_fit_sml_and_sml_evaluate(tmp_path):
    rng = np.random.default_rng(5)
    train = _logits(tmp_path / "train.h5", rng)
    test = _logits(tmp_path / "test.h5", rng)
    assert _run("fit-sml", "--logits", train, "--out", tmp_path / "sml.json").exit_code == 0
    for p in (train, test):
        _edit(p, "logits", 1, lambda a: np.full_like(a, np.inf))
    res = _run("fit-sml", "--logits", train, "--out", tmp_path / "sml2.json")
    _one_line_error(res, f"{train}: frame 1 ('f1'):", "NaN or inf")
    assert not (tmp_path / "sml2.json").exists()
    res = _run("evaluate", "--logits", test, "--method", "sml", "--sml-stats", tmp_path / "sml.json",
               "--out", tmp_path / "r", "--no-progress")
    _one_line_error(res, f"{test}: frame 1 ('f1'), sml:", "NaN")


def test_nan_score_map_names_its_file(tmp_path):
    root, maps = tmp_path / "set", tmp_path / "maps"
    for d in ("images", "labels"):
        (root / d).mkdir(parents=True)
    maps.mkdir()
    lab = np.zeros((H, W), np.uint8)
    lab[:3] = 1
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(lab).save(root / "labels" / "a.png")
    s = np.zeros((H, W), np.float32)
    s[5, 5] = np.inf
    np.save(maps / "a.npy", s)
    res = _run("evaluate", "--scores", maps, "--dataset", f"standard:{root}", "--out", tmp_path / "r")
    _one_line_error(res, f"{maps / 'a.npy'}: frame 'a', maps:")


# ------------------------------------------------------------------------------------------ thresholds files
_GOOD = {"format": "oodscore-thresholds", "version": 1, "source": "v", "methods": {"msp": {"f1": 0.5, "tpr95": 0.1}}}


def _doc(**methods):
    return json.dumps({**_GOOD, "methods": methods})


@pytest.mark.parametrize("text, match", [
    (_doc(msp={"f1": "big", "tpr95": 0.1}), "method 'msp': f1 threshold 'big' is not a finite number"),
    (_doc(msp={"f1": True}), "method 'msp': f1 threshold True is not a finite number"),
    (_doc(msp={"f1": [0.5]}), "method 'msp': f1 threshold [0.5] is not a finite number"),
    (_doc(msp={"f1": 0.5}).replace("0.5", "NaN"), "method 'msp': f1 threshold nan is not a finite number"),
    (_doc(msp=0.5), "method 'msp': expected an object"),
    (_doc(maxlogit={"f1": 0.5}), "no f1 threshold for method(s) msp; it has maxlogit"),
    (_doc(msp={"f1": None, "tpr95": 0.1}), "no f1 threshold for method(s) msp"),
    (json.dumps({**_GOOD, "methods": [0.5]}), "'methods' is a list, expected an object"),
    (json.dumps(_GOOD)[:40], "not valid JSON"),
    ("", "not valid JSON"),
    (json.dumps([1, 2]), "format None"),
    (json.dumps({**_GOOD, "version": 7}), "version 7 is not supported"),
])
def test_bad_thresholds_file(tmp_path, logits_file, text, match):
    th = tmp_path / "thresholds.json"
    th.write_text(text)
    res = _run("evaluate", "--logits", logits_file, "--method", "msp", "--threshold-from", th,
               "--out", tmp_path / "r", "--no-progress")
    _one_line_error(res, str(th), match)


def test_binary_thresholds_file_and_folder(tmp_path, logits_file):
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    res = _run("evaluate", "--logits", logits_file, "--method", "msp", "--threshold-from", tmp_path / "bin.json",
               "--out", tmp_path / "r")
    _one_line_error(res, str(tmp_path / "bin.json"), "not valid JSON")
    res = _run("evaluate", "--logits", logits_file, "--method", "msp", "--threshold-from", tmp_path,
               "--out", tmp_path / "r")
    _one_line_error(res, str(tmp_path), "is a folder, expected a thresholds.json file")


# ------------------------------------------------------------------------------------------ other bad inputs
def _empty_logits(path):
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "cocodag-logits", "version": 1, "num_classes": C})
        f.create_dataset("logits", shape=(0, C, H, W), dtype=np.float16)
        f.create_dataset("label", shape=(0, H, W), dtype=np.uint8)
        f.create_dataset("image_id", shape=(0,), dtype=h5py.string_dtype())
    return path


def _damaged_logits(path):
    with LogitsWriter(path, C, compression="gzip") as wr:
        rng = np.random.default_rng(6)
        for i in range(2):
            wr.write(rng.normal(size=(C, H, W)), np.zeros((H, W), np.uint8), f"f{i}")
    with h5py.File(path, "r") as f:
        info = f["logits"].id.get_chunk_info(1)
    data = bytearray(path.read_bytes())
    data[info.byte_offset + 10: info.byte_offset + 60] = bytes(50)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """{case: (args, expected fragments)} of every bad input checked (the files are made once per module)."""
    tmp_path = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(7)
    t = _logits(tmp_path / "t.h5", rng)
    mc3 = _logits(tmp_path / "mc3.h5", rng, mc=True, c=3)
    mc4 = _logits(tmp_path / "mc4.h5", rng, mc=True)
    assert _run("fit-oodmc", "--logits", mc3, "--out", tmp_path / "m3.joblib", "--svm-points-num", 100
                ).exit_code == 0
    _logits(tmp_path / "c3.h5", rng, c=3)
    assert _run("fit-sml", "--logits", tmp_path / "c3.h5", "--out", tmp_path / "sml3.json").exit_code == 0
    empty, damaged = _empty_logits(tmp_path / "empty.h5"), _damaged_logits(tmp_path / "damaged.h5")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    broken = tmp_path / "broken"                 # a standard set whose meta.json was cut short
    (broken / "images").mkdir(parents=True)
    (broken / "meta.json").write_text('{"format": "cocodag-ev')
    good = tmp_path / "good"
    for d in ("images", "labels"):
        (good / d).mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(good / "images" / "a.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(good / "labels" / "a.png")
    for kind in ("npy", "npz"):             # an empty .npy, a .npz cut in half
        (tmp_path / f"maps-{kind}").mkdir()
        np.savez(tmp_path / "a.npz", x=np.zeros((H, W), np.float32))
        data = (tmp_path / "a.npz").read_bytes()
        (tmp_path / f"maps-{kind}" / f"a.{kind}").write_bytes(b"" if kind == "npy" else data[: len(data) // 2])
    out = tmp_path / "r"
    ev = ("evaluate", "--no-progress", "--out", out, "--logits")
    sc = ("evaluate", "--no-progress", "--out", out, "--dataset", f"standard:{good}", "--scores")
    return {
        "empty-npy": ((*sc, tmp_path / "maps-npy"), ["maps-npy/a.npy: cannot read score map (EOFError"]),
        "truncated-npz": ((*sc, tmp_path / "maps-npz"), ["maps-npz/a.npz: cannot read score map (BadZipFile"]),
        "logits-is-a-folder": ((*ev, tmp_path / "adir", "--method", "msp"),
                               ["adir: is a folder, expected a logits.h5 file"]),
        "empty-logits": ((*ev, empty, "--method", "msp"), [f"{empty}: holds no frames"]),
        "empty-logits-fit-sml": (("fit-sml", "--logits", empty, "--out", tmp_path / "s.json"),
                                 [f"{empty}: holds no frames"]),
        "damaged-chunk": ((*ev, damaged, "--method", "msp"),
                          [f"{damaged}: cannot read 'logits' of frame 1 ('f1')", "re-export"]),
        "sml-stats-class-count": ((*ev, t, "--method", "sml", "--sml-stats", tmp_path / "sml3.json"),
                                  ["sml3.json: stats have 3 classes, the logits have 4"]),
        "sml-stats-folder": ((*ev, t, "--method", "sml", "--sml-stats", tmp_path / "adir"), ["adir: is a folder"]),
        "sml-stats-not-json": ((*ev, t, "--method", "sml", "--sml-stats", tmp_path / "afile"),
                               ["afile: not a valid JSON file"]),
        "oodmc-class-count": ((*ev, mc4, "--method", "oodmc", "--oodmc-model", tmp_path / "m3.joblib"),
                              ["m3.joblib: fitted on 3 classes, the logits have 4"]),
        "oodmc-not-joblib": ((*ev, mc4, "--method", "oodmc", "--oodmc-model", tmp_path / "afile"),
                             ["afile: not an OODMC model file"]),
        "out-is-a-file": (("evaluate", "--out", tmp_path / "afile", "--logits", t, "--method", "msp"),
                          ["is an existing file, expected a folder"]),
        "truncated-meta-json": (("evaluate", "--out", out, "--scores", tmp_path / "adir", "--dataset",
                                 f"standard:{broken}"), ["meta.json: not a readable JSON file"]),
        "fit-sml-stats-folder": (("fit-sml", "--stats", tmp_path / "adir", "--out", tmp_path / "s.json"),
                                 ["--stats", "is a folder"]),
        "fit-sml-out-folder": (("fit-sml", "--logits", t, "--out", tmp_path / "adir"),
                               ["--out", "is a folder, expected a file name"]),
        "fit-sml-out-under-file": (("fit-sml", "--logits", t, "--out", tmp_path / "afile" / "s.json"),
                                   ["afile is a file"]),
        "export-official-file": (("fit-sml", "--logits", t, "--export-official", tmp_path / "afile"),
                                 ["--export-official", "existing file"]),
        "fit-oodmc-out-under-file": (("fit-oodmc", "--logits", mc4, "--out", tmp_path / "afile" / "m.joblib"),
                                     ["afile is a file"]),
        "convert-truncated-meta": (("datasets", "convert", "standard", broken, tmp_path / "conv"),
                                   ["meta.json: not a readable JSON file"]),
        "convert-dst-is-a-file": (("datasets", "convert", "standard", good, tmp_path / "afile"),
                                  ["DST", "is an existing file, expected a folder"]),
    }


_BAD_INPUTS = ["empty-npy", "truncated-npz", "logits-is-a-folder", "empty-logits", "empty-logits-fit-sml",
               "damaged-chunk", "sml-stats-class-count", "sml-stats-folder", "sml-stats-not-json", "oodmc-class-count",
               "oodmc-not-joblib", "out-is-a-file", "truncated-meta-json", "fit-sml-stats-folder",
               "fit-sml-out-folder", "fit-sml-out-under-file", "export-official-file", "fit-oodmc-out-under-file",
               "convert-truncated-meta", "convert-dst-is-a-file"]


@pytest.mark.parametrize("case", _BAD_INPUTS)
def test_bad_inputs_are_one_line(bad_inputs, case):
    assert set(bad_inputs) == set(_BAD_INPUTS)
    args, matches = bad_inputs[case]
    _one_line_error(_run(*args), *matches)


def test_save_scores_folder_is_locked_like_out(tmp_path, logits_file):
    """Two jobs never write the same maps: a --save-scores folder held by another job refuses the second one."""
    maps = tmp_path / "maps"
    maps.mkdir()
    child = _hold_in_child(maps, tmp_path / "ready")
    try:
        res = _run("evaluate", "--logits", logits_file, "--method", "msp", "--out", tmp_path / "rep",
                   "--save-scores", f"npy:{maps}", "--no-progress")
        _one_line_error(res, f"--save-scores {maps}: in use by another job (pid {child.pid} on ")
        assert not list(maps.rglob("*.npy"))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # released: the same command writes the maps; the report folder itself as a save folder needs no second lock
    res = _run("evaluate", "--logits", logits_file, "--method", "msp", "--out", tmp_path / "rep",
               "--save-scores", f"npy:{maps}", "--save-scores", f"smiyc:{tmp_path / 'rep'}", "--no-progress")
    assert res.exit_code == 0, res.output
    assert list(maps.rglob("*.npy")) and list((tmp_path / "rep").rglob("*.hdf5"))
