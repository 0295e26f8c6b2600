"""The command-line path from a released field checkpoint to an export, a report and a fine-tuned model (issue 12).

For each family a network of ours, built with torch's default init (BatchNorm statistics calibrated on a few random
images, so that logits are O(10) and fit float16), is saved *exactly as its upstream repository saves it* -- the
savers are the ones the family's own test file uses (``test_wrn38._save_like_nvidia``,
``test_sml_r101._save_like_sml``, ``test_vainf.save_like_vainf``): wrapper dict, ``module.`` prefix, numpy scalars
under numpy 1's module path, pre-zip or zip pickle format. Then, through ``maxent-train`` itself:

1. ``export --checkpoint FILE --model NAME --images EVALSET`` writes the logits our forward computes (float16 storage
   tolerance, argmax agreement >= 99.5 %). Our forward equals the upstream forward (the family's own test file checks
   it against numbers recorded from the upstream code), so this closes the chain file -> export -> upstream numbers;
2. ``miou --model`` on a tiny Cityscapes tree labelled with the network's own predictions (pixel accuracy ~100 %);
3. ``predict --model --method entropy`` writes the heat map, and its scores are the entropy of our logits;
4. ``fit --init FILE --max-steps 1`` starts from the file's weights (one Adam step away) and its ``model-final.pt``
   exports without ``--model`` (the metadata names the model);
5. MC dropout: WRN38 runs full passes (dropout sits in its trunk), VainF samples the head only, SML (dropout only in
   its unused ``dsn`` head) is refused until ``--mc-dropout P`` inserts test-time dropout.

PEBAL's ``best_ad_ckpt.pth`` layout (``{'model': ...}``, ``branch1.`` prefix, 20 classes) is an extra WRN38 case
(all steps but fit: ``fit --init`` reads a file through the same loader as export, and a WRN38 fit costs ~10 s).
Everything runs on CPU on 64x96 frames and 32x32 crops; big files are deleted when a family is done.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _maxent_shards import make_shards
from test_sml_r101 import _save_like_sml
from test_vainf import save_like_vainf
from test_wrn38 import _save_like_nvidia  # the savers of the family tests: one definition of each layout
from typer.testing import CliRunner

from cocodag.formats.logits import LogitsFile
from cocodag_apps.cli import maxent_app
from maxent_train.data import normalize
from maxent_train.models import create_model, read_checkpoint

runner = CliRunner()
UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"
H, W = 64, 96            # evaluation frames (rows, columns)
N_FRAMES = 2


# ----------------------------------------------------------------------------------------------------- the layouts
def _nvidia(model: torch.nn.Module, path: Path) -> None:
    """NVIDIA semantic-segmentation (sdcnet) ``evaluate_eval``: ``{'state_dict': module.* (+ criterion weight),
    'optimizer', 'epoch', 'mean_iu': numpy.float64, 'command'}``, pre-1.6 pickle format, numpy 1 scalar path."""
    keys = json.loads((UPSTREAM / "wrn38_keys.json").read_text())["keys"]
    _save_like_nvidia(model, keys, path)


def _pebal(model: torch.nn.Module, path: Path) -> None:
    """PEBAL's ``best_ad_ckpt.pth``: ``{'model': ...}`` of its ``Network`` (the DeepWV3Plus held as ``branch1``)."""
    torch.save({"model": {"branch1." + k: v for k, v in model.state_dict().items()}}, path)


def _sml(model: torch.nn.Module, path: Path) -> None:
    """SML ``utils/misc.py:evaluate_eval``: ``{'state_dict': module.*, 'optimizer', 'scheduler', 'epoch',
    'mean_iu': np.nanmean(...), 'command'}``, zip format, numpy 1 scalar path (the released r101_os8_base_cty.pth)."""
    _save_like_sml(model.state_dict(), path, np.nanmean(np.array([0.81, 0.79])))


def _vainf_zip(model: torch.nn.Module, path: Path) -> None:
    """VainF ``main.py:save_ckpt`` as the 2021 ResNet-101 release: zip format, ``best_score`` numpy.float64
    (numpy 1)."""
    save_like_vainf(path, model.state_dict(), legacy_format=False, numpy_module="numpy.core")


def _vainf_legacy(model: torch.nn.Module, path: Path) -> None:
    """VainF ``main.py:save_ckpt`` as the 2019 MobileNetV2 release: torch < 1.6 pre-zip format, numpy 1 scalar."""
    save_like_vainf(path, model.state_dict(), legacy_format=True, numpy_module="numpy.core")


@dataclass(frozen=True)
class Family:
    name: str                               # registry name (--model)
    file: str                               # the released file's name
    save: Callable[[torch.nn.Module, Path], None]
    mc: str                                 # "full" (dropout in the trunk), "head" or "needs_mc_dropout"
    num_classes: int = 19
    note: str | None = None                 # expected stderr note of the loader
    fit: bool = True                        # run the fit step


FAMILIES = {
    "wrn38-nvidia": Family("deeplabv3plus_wrn38", "cityscapes_best.pth", _nvidia, "full",
                           note="dropped 1 training-only entry"),
    # PEBAL: fit --init reads the file through the same loader as export (checked), and a WRN38 fit costs ~10 s
    "wrn38-pebal": Family("deeplabv3plus_wrn38", "best_ad_ckpt.pth", _pebal, "full", num_classes=20, fit=False),
    "sml-r101": Family("deeplabv3plus_resnet101_sml", "r101_os8_base_cty.pth", _sml, "needs_mc_dropout"),
    "vainf-r101": Family("deeplabv3plus_resnet101_vainf", "best_deeplabv3plus_resnet101_cityscapes_os16.pth",
                         _vainf_zip, "head"),
    "vainf-mnv2": Family("deeplabv3plus_mobilenetv2_vainf", "best_deeplabv3plus_mobilenet_cityscapes_os16.pth",
                         _vainf_legacy, "head"),
}


# ----------------------------------------------------------------------------------------------------- helpers
def _cli(*args: str, ok: bool = True):
    res = runner.invoke(maxent_app, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, f"maxent-train {' '.join(map(str, args))}\n{res.output}"
    return res


def _class_args(fam: Family) -> list[str]:
    return ["--num-classes", str(fam.num_classes)] if fam.num_classes != 19 else []


def _calibrate_batchnorm(model: torch.nn.Module, images: np.ndarray) -> None:
    """Running statistics = the batch statistics of ``images`` (cumulative average), so that a default-initialised
    network gives O(1..10) logits in eval mode (the fixture weights of the family tests give ~1e8: float16 overflow)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(normalize(torch.from_numpy(images)))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def _forward(model: torch.nn.Module, rgb: np.ndarray) -> np.ndarray:
    """Our model's logits (C, H, W) on one RGB uint8 frame, normalized as export normalizes it."""
    with torch.no_grad():
        return model(normalize(torch.from_numpy(rgb)[None]))[0].numpy()


def _frame(rng: np.random.Generator) -> np.ndarray:
    """A 64x96 RGB frame: coloured blocks plus noise (so the logits vary over the frame)."""
    blocks = rng.integers(0, 256, (4, 6, 3)).astype(np.int16)
    img = np.kron(blocks, np.ones((H // 4, W // 6, 1), np.int16)) + rng.integers(-25, 26, (H, W, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _entropy01(logits: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(logits).double()
    logp = torch.log_softmax(t, 0)
    return (-(logp.exp() * logp).sum(0) / math.log(t.shape[0])).numpy()


# ----------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def evalset(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A standard-layout evaluation set (images/*.png, labels/*.png with 0/1/255) and its RGB frames."""
    root = tmp_path_factory.mktemp("evalset")
    rng = np.random.default_rng(12)
    (root / "images").mkdir()
    (root / "labels").mkdir()
    frames = []
    for i in range(N_FRAMES):
        rgb = _frame(rng)
        assert cv2.imwrite(str(root / "images" / f"f{i}.png"), rgb[..., ::-1])
        assert cv2.imwrite(str(root / "labels" / f"f{i}.png"), rng.choice(np.array([0, 1, 255], np.uint8), (H, W)))
        frames.append(rgb)
    return root, frames


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards") / "ds", {"cityscapes": 4, "coco": 2, "dag": 2}, size=32,
                       shard_size=4)


@dataclass
class Case:
    fam: Family
    dir: Path
    file: Path                  # the checkpoint in the upstream layout
    model: torch.nn.Module      # our model holding the same weights, eval mode
    ref: list[np.ndarray]       # its logits on the evaluation frames


def _make_case(fam: Family, d: Path, frames: list[np.ndarray]) -> Case:
    torch.manual_seed(0)
    model = create_model(fam.name, num_classes=fam.num_classes)
    _calibrate_batchnorm(model, np.stack(frames + [_frame(np.random.default_rng(5))]))
    path = d / fam.file
    fam.save(model, path)
    ref = [_forward(model, rgb) for rgb in frames]
    assert all(np.isfinite(r).all() and 0.5 < np.abs(r).max() < 1e3 for r in ref)    # float16-safe, not flat
    return Case(fam, d, path, model, ref)


def _expected(ref: np.ndarray) -> np.ndarray:
    return ref.astype(np.float16).astype(np.float32)


# ----------------------------------------------------------------------------------------------------- the steps
def step_export_writes_the_upstream_logits(case: Case, evalset, shards) -> None:
    fam, out = case.fam, case.dir / "x.h5"
    res = _cli("export", "--checkpoint", case.file, "--model", fam.name, *_class_args(fam), "--images", evalset[0],
               "--preset", "standard", "--out", out, "--device", "cpu", "--no-progress")
    if fam.note:
        assert fam.note in res.output, res.output
    with LogitsFile(out) as lf:
        assert len(lf) == N_FRAMES and lf.num_classes == fam.num_classes and lf.shape == (H, W)
        assert lf.image_ids == [f"f{i}" for i in range(N_FRAMES)]
        assert lf.attrs["model"] == fam.name
        for i, ref in enumerate(case.ref):
            stored = lf.logits(i)
            scale = float(np.abs(ref).max())
            np.testing.assert_allclose(stored, _expected(ref), rtol=1e-3, atol=1e-3 * scale)
            agree = float((stored.argmax(0) == ref.argmax(0)).mean())
            assert agree >= 0.995, f"frame {i}: argmax agreement {agree}"


def step_miou_runs_on_the_released_file(case: Case, evalset, shards) -> None:
    """A one-frame Cityscapes val tree labelled with the network's own argmax: the report is ~100 %."""
    rgb = _frame(np.random.default_rng(7))
    pred = _forward(case.model, rgb).argmax(0).astype(np.uint8)
    pred[pred >= 19] = 255              # PEBAL's 20th class is no Cityscapes trainId
    root = case.dir / "cityscapes"
    for i in range(2):                  # the second frame is the one --limit 1 leaves out
        stem = f"c_{i:06d}_000019"
        for sub, name, img in (("leftImg8bit", f"{stem}_leftImg8bit.png", rgb[..., ::-1]),
                               ("gtFine", f"{stem}_gtFine_labelTrainIds.png", pred)):
            (root / sub / "val" / "c").mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(root / sub / "val" / "c" / name), img)
    res = _cli("miou", "--checkpoint", case.file, "--model", case.fam.name, *_class_args(case.fam),
               "--cityscapes", root, "--split", "val", "--limit", "1", "--out", case.dir / "m.json", "--device", "cpu",
               "--no-progress")
    assert re.search(r"^mIoU \d+\.\d\d  pixel acc \d+\.\d\d  \(1 frames\)$", res.output, re.MULTILINE), res.output
    got = json.loads((case.dir / "m.json").read_text())
    assert got["n_frames"] == 1 and got["model"] == case.fam.name
    assert got["pixel_acc"] >= 0.995, got


def step_predict_writes_the_heat_map(case: Case, evalset, shards) -> None:
    image = evalset[0] / "images" / "f1.png"
    out = case.dir / "pred"
    _cli("predict", image, "--checkpoint", case.file, "--model", case.fam.name, *_class_args(case.fam),
         "--out", out, "--method", "entropy", "--save-scores", "--device", "cpu", "--no-progress")
    heat = cv2.imread(str(out / "f1_heat.png"))
    assert heat is not None and heat.size > 0
    assert (out / "f1_overlay.png").is_file()
    scores = np.load(out / "scores" / "f1.npy")
    assert scores.shape == (H, W)
    np.testing.assert_allclose(scores, _entropy01(case.ref[1]), atol=1e-4)


def step_fit_starts_from_the_file_and_exports_by_metadata(case: Case, evalset, shards) -> None:
    fam, run = case.fam, case.dir / "run"
    _cli("fit", "--data", shards, "--model", fam.name, *_class_args(fam), "--init", case.file, "--out", run,
         "--max-steps", "1", "--batch-size", "2", "--device", "cpu", "--no-progress")
    final = run / "model-final.pt"
    assert final.is_file()
    state, meta = read_checkpoint(final)
    assert meta["model"] == fam.name and meta["num_classes"] == fam.num_classes
    # one Adam step (lr 1e-5) away from the file's weights: --init loaded them (a fresh init is ~1e-2 away)
    own = dict(case.model.named_parameters())
    assert set(own) <= set(state)
    diffs = [float((state[k].float() - p.detach()).abs().max()) for k, p in own.items()]
    assert max(diffs) <= 1e-4 and max(diffs) > 0, (min(diffs), max(diffs))
    del state
    out = case.dir / "final.h5"
    _cli("export", "--checkpoint", final, "--images", evalset[0], "--preset", "standard", "--out", out,
         "--limit", "1", "--device", "cpu", "--no-progress")
    with LogitsFile(out) as lf:
        assert lf.attrs["model"] == fam.name and lf.num_classes == fam.num_classes and len(lf) == 1
        assert np.isfinite(lf.logits(0)).all()
    shutil.rmtree(run)


def step_mc_dropout_export(case: Case, evalset, shards) -> None:
    fam = case.fam
    base = ["export", "--checkpoint", case.file, "--model", fam.name, *_class_args(fam), "--images", evalset[0],
            "--preset", "standard", "--limit", "1", "--device", "cpu", "--no-progress", "--mc-samples", "2"]
    out = case.dir / "mc.h5"
    if fam.mc == "needs_mc_dropout":
        res = _cli(*base, "--out", out, ok=False)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1 and "Traceback" not in res.output, res.output
        assert "--mc-dropout" in lines[0] and fam.name in lines[0], lines[0]
        assert not out.exists()
        _cli(*base, "--mc-dropout", "0.1", "--out", out)
    else:
        _cli(*base, "--out", out)
    with LogitsFile(out) as lf:
        attrs = lf.mc_attrs
        assert attrs["mc_samples"] == 2
        assert attrs["head_only"] is (fam.mc != "full"), attrs
        if fam.mc == "needs_mc_dropout":
            assert attrs["mc_dropout"] == pytest.approx(0.1) and "final2.0" in attrs["mc_dropout_at"], attrs
        else:
            assert "mc_dropout" not in attrs, attrs
        mc = lf.mc(0)                   # as stored: at label size, or natively with the rule and the label size
        assert mc["central"].shape[:2] == (3, fam.num_classes)
        assert tuple(mc.get("size", mc["central"].shape[-2:])) == (H, W), (mc["central"].shape, mc.get("size"))
        assert np.isfinite(mc["central"]).all() and float(np.abs(mc["central"][0]).max()) > 0
        # the deterministic logits are untouched by the MC block (and by the inserted test-time dropout)
        scale = float(np.abs(case.ref[0]).max())
        np.testing.assert_allclose(lf.logits(0), _expected(case.ref[0]), rtol=1e-3, atol=1e-3 * scale)


def _describe(e: Exception) -> str:
    """The error in a few lines, plus where it was raised when that is not an assertion of this file."""
    text = " | ".join(str(e).strip().splitlines()[:12])
    if isinstance(e, AssertionError):
        return f"AssertionError: {text}"
    where = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {text} (raised at {where.filename}:{where.lineno} in {where.name})"


STEPS = (step_export_writes_the_upstream_logits, step_miou_runs_on_the_released_file,
         step_predict_writes_the_heat_map, step_fit_starts_from_the_file_and_exports_by_metadata,
         step_mc_dropout_export)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(FAMILIES))
def test_released_checkpoint_through_the_cli(key, tmp_path, evalset, shards):
    """Every step runs (they are independent); the test fails at the end naming each failed step and its error.
    ``-s`` shows the time per step."""
    fam = FAMILIES[key]
    t0 = time.perf_counter()
    case = _make_case(fam, tmp_path, evalset[1])
    times, failed = {"build+save": time.perf_counter() - t0}, []
    try:
        for step in STEPS:
            if step is step_fit_starts_from_the_file_and_exports_by_metadata and not fam.fit:
                continue
            t = time.perf_counter()
            try:
                step(case, evalset, shards)
            except Exception as e:       # noqa: BLE001 - reported with the step's name below
                failed.append(f"{step.__name__[5:]}: {_describe(e)}")
            times[step.__name__[5:].split("_")[0]] = time.perf_counter() - t
    finally:
        (tmp_path / fam.file).unlink(missing_ok=True)   # the big files (WRN38: ~0.5 GB file, ~2 GB run directory)
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
    print(f"\n{key}: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
          + f"; total {time.perf_counter() - t0:.1f} s")
    assert not failed, f"{key} ({fam.name}): " + "\n".join(failed)
