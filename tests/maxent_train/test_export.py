"""maxent_train.export: logits.h5 layout, labels, MC block vs explicit passes, SML stats, evalset input."""
from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _maxent_shards import make_shards

from cocodag.errors import CocodagError
from cocodag.formats.logits import LogitsFile
from cocodag.formats.sml_stats import SMLStats
from maxent_train import MaxentError
from maxent_train.data import normalize
from maxent_train.export import ExportOptions, export_logits, predict_logits
from maxent_train.mc import mc_moments
from maxent_train.models import create_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    data = make_shards(d / "ds", {"cityscapes": 6, "coco": 0, "dag": 5}, size=24, shard_size=4)
    torch.manual_seed(1)
    model = create_model("tiny_segnet", num_classes=19, dropout=0.3)
    ckpt = d / "model-final.pt"
    torch.save({"state_dict": model.state_dict(),
                "metadata": {"model": "tiny_segnet", "num_classes": 19, "model_kwargs": {"dropout": 0.3}}}, ckpt)
    return d, data, ckpt, model.eval()


def _shard_reference(data):
    """Images and 0/1/255 labels in export order (dag shards, then cityscapes) read with plain h5py."""
    imgs, labs = [], []
    for kind in ("dag", "cityscapes"):
        for p in sorted(data.glob(f"{kind}-*.h5")):
            with h5py.File(p, "r") as f:
                imgs.append(f["image"][()])
                labs.append(f["label"][()])
    imgs, labs = np.concatenate(imgs), np.concatenate(labs)
    ref = np.full(labs.shape, 255, np.uint8)
    ref[labs < 19] = 0
    ref[labs == 254] = 1
    return imgs, ref


def test_export_shards_logits_labels_and_sml(setup):
    d, data, ckpt, model = setup
    out = d / "logits.h5"
    sml_path = d / "sml.json"
    res = export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), data=str(data), kinds=("dag", "cityscapes"),
                                      sml_stats=str(sml_path), progress=False, store_images=True, image_max_side=12,
                                      compression="gzip"))
    assert res == {"out": str(out), "num_images": 11, "shape": (11, 19, 6, 6), "logits_resolution": "native"}
    assert not out.with_name("logits.h5.tmp").exists()
    imgs, ref_labels = _shard_reference(data)
    with h5py.File(out, "r") as f:      # the documented layout (version 2, native resolution), with plain h5py
        assert f.attrs["format"] == "cocodag-logits" and f.attrs["version"] == 2 and f.attrs["num_classes"] == 19
        assert f.attrs["logits_resolution"] == "native" and tuple(f.attrs["label_shape"]) == (24, 24)
        assert f.attrs["upsample_mode"] == "bilinear" and not f.attrs["upsample_align_corners"]
        assert f["logits"].dtype == np.float16 and f["logits"].shape == (11, 19, 6, 6)     # tiny_segnet: 1/4
        assert f["logits"].chunks == (1, 19, 6, 6)
        assert np.array_equal(f["label"][()], ref_labels) and f["label"].compression == "gzip"
        ids = [x.decode() for x in f["image_id"][()]]
        assert ids[0].startswith("dag-00000/00000/") and len(set(ids)) == 11
        assert f["image"].shape == (11, 12, 12, 3) and "mc" not in f and "roi" not in f
        assert "abstention_channel" not in f.attrs      # a network without one: the version-2 file as before
        native = f["logits"][()]
    with torch.no_grad():
        x = normalize(torch.from_numpy(imgs))
        expect_native, expect = model.forward_native(x).numpy(), model(x).numpy()
    np.testing.assert_allclose(native.astype(np.float32), expect_native, atol=2e-3, rtol=1e-3)
    with LogitsFile(out) as lf:         # the reader upsamples with the recorded rule: label-size logits
        assert lf.shape == (24, 24) and lf.native_shape == (6, 6) and lf.logits_resolution == "native"
        assert lf.upsample_rule == {"mode": "bilinear", "align_corners": False}
        logits = np.stack([fr.logits for fr in lf.iter_frames(image=False)])
        np.testing.assert_array_equal(lf.frame(3, native=True).logits, native[3].astype(np.float32))
    assert logits.shape == (11, 19, 24, 24)
    np.testing.assert_allclose(logits, expect, atol=2e-3, rtol=1e-3)
    # SML stats: per predicted class mean / unbiased std of the max logit, float64 reference on the logits as read
    sml = json.loads(sml_path.read_text())
    lg = logits.astype(np.float64).transpose(1, 0, 2, 3).reshape(19, -1)
    pred, lmax = lg.argmax(0), lg.max(0)
    for c in range(19):
        e = sml["classes"][str(c)]
        v = lmax[pred == c]
        assert e["count"] == len(v)
        if len(v) > 1:
            assert e["mean"] == pytest.approx(v.mean(), abs=1e-9) and e["std"] == pytest.approx(v.std(ddof=1), abs=1e-9)
    st = SMLStats.load(sml_path)                       # the same JSON oodscore reads
    assert int(st.count_.sum()) == lg.shape[1]


@pytest.mark.parametrize("moments_of,resolution", [("logits", "native"), ("probs", "native"), ("logits", "label"),
                                                    ("probs", "label")])
def test_mc_block_equals_explicit_passes(setup, moments_of, resolution):
    d, data, ckpt, model = setup
    out = d / f"mc-{moments_of}-{resolution}.h5"
    T, K, seed = 6, 4, 5
    export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), data=str(data), kinds=("dag",), limit=3,
                                mc_samples=T, moment_order=K, moments_of=moments_of, seed=seed, progress=False,
                                logits_resolution=resolution))
    native = resolution == "native"
    hw = (6, 6) if native else (24, 24)
    imgs, _ = _shard_reference(data)
    with h5py.File(out, "r") as f:
        g = f["mc"]
        assert g.attrs["moments_of"] == moments_of and g.attrs["mc_samples"] == T and g.attrs["moment_order"] == K
        assert bool(g.attrs["head_only"]) and f["logits"].shape == (3, 19, *hw)
        mean, central, entropy = g["mean"][()], g["central"][()], g["entropy"][()]
    assert central.shape == (3, K - 1, 19, *hw) and mean.dtype == np.float32 and entropy.shape == (3, *hw)
    forward = model.forward_native if native else model
    for i in range(3):
        x = normalize(torch.from_numpy(imgs[i:i + 1]))
        # the library function, called directly
        mom = mc_moments(model, x, samples=T, order=K, moments_of=moments_of, head_only=True, seed=seed + i,
                         native=native)
        np.testing.assert_array_equal(mean[i], mom["mean"][0].numpy())
        np.testing.assert_array_equal(central[i], mom["central"][0].numpy())
        # brute force: T explicit full stochastic passes (dropout on, BatchNorm in eval), float64 moments
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed + i)
            passes = torch.stack([forward(x)[0] for _ in range(T)]).double()
        model.eval()
        probs = F.softmax(passes, dim=1)
        vals = passes if moments_of == "logits" else probs
        mu = vals.mean(0)
        np.testing.assert_allclose(mean[i], mu.numpy(), atol=1e-4)
        for k in range(2, K + 1):
            np.testing.assert_allclose(central[i, k - 2], ((vals - mu) ** k).mean(0).numpy(), atol=1e-4)
        pm = probs.mean(0)
        np.testing.assert_allclose(entropy[i], -(pm * pm.log()).sum(0).numpy(), atol=1e-4)


def test_export_writes_the_logits_contract_and_sml_stats_of_the_stored_logits(setup):
    # what export writes is read by the one reader, and its SML JSON is what fitting the file itself gives
    d, data, ckpt, _ = setup
    out, sml_path = d / "contract.h5", d / "contract-sml.json"
    res = export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), data=str(data), kinds=("cityscapes", "dag"),
                                      limit=4, mc_samples=3, moment_order=3, seed=2, sml_stats=str(sml_path),
                                      compression="gzip", progress=False))
    assert res == {"out": str(out), "num_images": 4, "shape": (4, 19, 6, 6), "logits_resolution": "native"}
    with LogitsFile(out) as lf:
        assert len(lf) == 4 and lf.num_classes == 19 and lf.shape == (24, 24) and lf.has_mc and not lf.has_roi
        assert lf.native_shape == (6, 6) and lf.attrs["version"] == 2
        assert lf.image_ids[0].startswith("cityscapes-00000/00000/")
        assert {"dataset": "cocodag", "model": "tiny_segnet", "checkpoint": str(ckpt)}.items() <= lf.attrs.items()
        assert "maxent_train" in lf.attrs
        assert lf.mc_attrs == {"moments_of": "logits", "mc_samples": 3, "moment_order": 3, "head_only": True,
                               "seed": 2}
        mc = lf.mc(3)       # native moments, with the rule and the label size for scorers that upsample
        assert mc["central"].shape == (2, 19, 6, 6) and mc["entropy"].shape == (6, 6)
        assert mc["upsample"] == {"mode": "bilinear", "align_corners": False} and mc["size"] == (24, 24)
        expect = SMLStats().fit(fr.logits for fr in lf.iter_frames(image=False))
    st = SMLStats.load(sml_path)
    assert st.source == f"maxent-train export {out.name}"
    assert (st.n_images_, st.n_pixels_) == (expect.n_images_, expect.n_pixels_) == (4, 4 * 24 * 24)
    np.testing.assert_array_equal(st.count_, expect.count_)
    np.testing.assert_array_equal(st.mean_, expect.mean_)
    np.testing.assert_array_equal(st.var_, expect.var_)


@pytest.fixture(scope="module")
def abstention_ckpt(tmp_path_factory):
    """A 20-output tiny_segnet recorded as a PEBAL-style network: output 19 is the abstention channel."""
    torch.manual_seed(3)
    model = create_model("tiny_segnet", num_classes=20, dropout=0.3).eval()
    with torch.no_grad():       # make the abstention channel win the argmax of some pixels, so slicing matters
        model.classifier.bias[19] += 2.0
    ckpt = tmp_path_factory.mktemp("abstention") / "pebal-final.pt"
    torch.save({"state_dict": model.state_dict(),
                "metadata": {"model": "tiny_segnet", "num_classes": 20, "model_kwargs": {"dropout": 0.3},
                             "abstention_channel": 19, "objective": {"name": "pebal", "params": {}}}}, ckpt)
    return ckpt, model


def test_export_keeps_the_abstention_channel_and_says_which_it_is(setup, abstention_ckpt, tmp_path):
    _, data, _, _ = setup
    ckpt, model = abstention_ckpt
    out, sml_path = tmp_path / "pebal.h5", tmp_path / "pebal-sml.json"
    T, K, seed = 4, 3, 7
    res = export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), data=str(data), kinds=("dag",), limit=3,
                                      mc_samples=T, moment_order=K, seed=seed, sml_stats=str(sml_path),
                                      logits_dtype="float32", progress=False))
    assert res["shape"] == (3, 20, 6, 6)        # every output, the abstention channel included
    with h5py.File(out, "r") as f:              # the documented attributes, with plain h5py
        assert f.attrs["version"] == 3 and f.attrs["num_classes"] == 19 and f.attrs["abstention_channel"] == 19
        assert f["logits"].shape == (3, 20, 6, 6) and f["mc/mean"].shape == (3, 20, 6, 6)
        assert f["mc/central"].shape == (3, K - 1, 20, 6, 6)
        entropy = f["mc/entropy"][()]
    imgs, _ = _shard_reference(data)
    with LogitsFile(out) as lf:
        assert (lf.num_classes, lf.num_channels, lf.abstention_channel) == (19, 20, 19)
        logits = np.stack([lf.logits(i) for i in range(3)])
        with torch.no_grad():
            expect = model(normalize(torch.from_numpy(imgs[:3]))).numpy()
        np.testing.assert_allclose(logits, expect, atol=1e-5, rtol=1e-5)
        assert (logits.argmax(1) == 19).any()   # the abstention channel would win some pixels if it were a class
        # the SML statistics count the 19 classes only: those of the class channels as the reader returns them
        expect_sml = SMLStats(num_classes=19).fit(logits[i:i + 1, :19] for i in range(3))
    st = SMLStats.load(sml_path)
    assert st.num_classes == 19 and st.mean_.shape == (19,)
    np.testing.assert_array_equal(st.count_, expect_sml.count_)
    np.testing.assert_array_equal(st.mean_, expect_sml.mean_)
    # the MC block: moments of every output, the entropy of the 19 classes' mean softmax (explicit passes)
    for i in range(3):
        x = normalize(torch.from_numpy(imgs[i:i + 1]))
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed + i)
            passes = torch.stack([model.forward_native(x)[0] for _ in range(T)]).double()
        model.eval()
        pm = F.softmax(passes[:, :19], dim=1).mean(0)
        np.testing.assert_allclose(entropy[i], -(pm * pm.log()).sum(0).numpy(), atol=1e-4)


def test_export_refuses_what_an_abstention_channel_cannot_have(setup, abstention_ckpt, tmp_path):
    _, data, _, _ = setup
    ckpt, model = abstention_ckpt
    with pytest.raises(MaxentError, match=r"--moments-of probs: checkpoint .* has an abstention channel \(output 19\)"):
        export_logits(ExportOptions(checkpoint=str(ckpt), out=str(tmp_path / "p.h5"), data=str(data), limit=1,
                                    mc_samples=3, moments_of="probs", progress=False))
    with pytest.raises(MaxentError, match="moments of probabilities with an abstention channel"):
        mc_moments(model, torch.zeros(1, 3, 16, 16), samples=2, moments_of="probs", classes=19)
    bad = tmp_path / "bad.pt"       # an abstention channel that is not the last output
    torch.save({"state_dict": model.state_dict(), "metadata": {"model": "tiny_segnet", "num_classes": 20,
                                                               "abstention_channel": 3}}, bad)
    with pytest.raises(MaxentError, match=r"abstention_channel is 3, expected 19 \(the last of the model's 20 "):
        export_logits(ExportOptions(checkpoint=str(bad), out=str(tmp_path / "b.h5"), data=str(data), limit=1,
                                    progress=False))
    assert not any(tmp_path.glob("*.h5"))


def test_export_float16_mc_overflow_is_refused(setup, tmp_path):
    d, data, ckpt, _ = setup
    big = d / "big.pt"      # a scaled classifier: logits stay finite, their 4th central moments pass 65504
    sd = torch.load(ckpt, weights_only=True)
    sd["state_dict"] = {k: v * 3000 if k.startswith("classifier") else v for k, v in sd["state_dict"].items()}
    torch.save(sd, big)
    with pytest.raises(CocodagError, match="overflows float16"):
        export_logits(ExportOptions(checkpoint=str(big), out=str(tmp_path / "o.h5"), data=str(data), limit=1,
                                    mc_samples=3, mc_dtype="float16", progress=False))
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.tmp").exists()


def _write_evalset(root, n=2, h=40, w=56):
    rng = np.random.default_rng(0)
    for sub in ("images", "labels", "roi"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"f{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        lab = rng.choice(np.array([0, 1, 255], np.uint8), (h, w))
        cv2.imwrite(str(root / "labels" / f"f{i}.png"), lab)
        cv2.imwrite(str(root / "roi" / f"f{i}.png"), (rng.random((h, w)) > 0.5).astype(np.uint8))
    return root


def test_export_evalset_full_resolution_with_roi(setup):
    d, _, ckpt, model = setup
    root = _write_evalset(d / "evalset")
    out = d / "eval.h5"
    export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), images=str(root), preset="standard",
                                progress=False, logits_resolution="label"))
    with h5py.File(out, "r") as f:
        assert f.attrs["dataset"] == "standard" and f.attrs["logits_resolution"] == "label"
        assert f["logits"].shape == (2, 19, 40, 56) and f["roi"].compression == "gzip"
        assert [x.decode() for x in f["image_id"][()]] == ["f0", "f1"]
        for i in range(2):
            assert np.array_equal(f["label"][i], cv2.imread(str(root / "labels" / f"f{i}.png"), 0))
            assert np.array_equal(f["roi"][i], cv2.imread(str(root / "roi" / f"f{i}.png"), 0))
        rgb = cv2.cvtColor(cv2.imread(str(root / "images" / "f1.png")), cv2.COLOR_BGR2RGB)
        with torch.no_grad():
            expect = model(normalize(torch.from_numpy(rgb)[None]))[0].numpy()
        np.testing.assert_allclose(f["logits"][1].astype(np.float32), expect, atol=2e-3, rtol=1e-3)


def test_sliding_window_equals_full_inference_for_a_pointwise_model():
    # A 1x1-conv network has no spatial context: any tiling must reproduce the full-image logits exactly.
    torch.manual_seed(0)
    net = nn.Conv2d(3, 5, 1).eval()
    x = torch.randn(1, 3, 37, 53)
    full = predict_logits(net, x)
    tiled = predict_logits(net, x, window=16, stride=10)
    torch.testing.assert_close(tiled, full, atol=1e-6, rtol=1e-6)
    with pytest.raises(MaxentError, match="stride"):
        predict_logits(net, x, window=16, stride=20)


def test_export_refuses_bad_options(setup, tmp_path):
    d, data, ckpt, _ = setup
    with pytest.raises(MaxentError, match="exactly one input"):
        export_logits(ExportOptions(checkpoint=str(ckpt), out=str(tmp_path / "x.h5"), progress=False))
    with pytest.raises(MaxentError, match="--kinds"):
        export_logits(ExportOptions(checkpoint=str(ckpt), out=str(tmp_path / "x.h5"), data=str(data),
                                    kinds=("dags",), progress=False))
    with pytest.raises(MaxentError, match="class"):
        export_logits(ExportOptions(checkpoint=str(ckpt), out=str(tmp_path / "x.h5"), data=str(data),
                                    num_classes=5, progress=False))
    with pytest.raises(MaxentError, match=r"--compression lzf: lzf is no longer written: .* use gzip"):
        export_logits(ExportOptions(checkpoint=str(ckpt), out=str(tmp_path / "x.h5"), data=str(data),
                                    compression="lzf", progress=False))
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.tmp").exists()


def test_export_holds_a_lock_on_out_and_sml_stats(setup, tmp_path):
    from cocodag.lock import OutputLock, OutputLockedError

    d, data, ckpt, _ = setup
    out, sml = tmp_path / "l.h5", tmp_path / "sml.json"
    with OutputLock(out):       # another job writes l.h5 (lock file l.h5.lock): refused at once, nothing written
        with pytest.raises(OutputLockedError, match=rf"--out {out}: in use by another job \(pid \d+ on "):
            export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), data=str(data), progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.h5.lock"]
    with OutputLock(sml, option="--sml-stats"):
        with pytest.raises(OutputLockedError, match=rf"--sml-stats {sml}: in use by another job"):
            export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), data=str(data), sml_stats=str(sml),
                                        progress=False))
    assert not out.exists() and not sml.exists()
    export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), data=str(data), sml_stats=str(sml), limit=2,
                                progress=False))
    assert out.is_file() and sml.is_file()
    with OutputLock(out), OutputLock(sml):      # both released at the end of the export
        pass


def test_export_names_the_frame_with_non_finite_logits(setup, tmp_path):
    d, data, ckpt, _ = setup
    bad = tmp_path / "nan.pt"
    sd = torch.load(ckpt, weights_only=True)
    sd["state_dict"] = {k: torch.full_like(v, float("nan")) if k == "classifier.bias" else v
                        for k, v in sd["state_dict"].items()}
    torch.save(sd, bad)
    with pytest.raises(MaxentError, match=rf"frame dag-00000/00000/\S+: the model's logits hold \d+ NaN .*{bad}"):
        export_logits(ExportOptions(checkpoint=str(bad), out=str(tmp_path / "o.h5"), data=str(data), progress=False))
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.tmp").exists()


def test_export_disk_full_is_one_line_and_leaves_nothing(small_fs, setup):
    mnt, _ = small_fs
    d, data, ckpt, _ = setup
    out = mnt / "l.h5"
    mc = dict(mc_samples=2, moment_order=4, logits_resolution="label")  # ~200 KB a 24x24 frame: 11 do not fit 1 MiB
    # without compression the size is known: refused up front
    with pytest.raises(CocodagError, match=rf"No space left on device: {out} needs about 2\.\d MiB but"):
        export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), data=str(data), kinds=("dag", "cityscapes"),
                                    progress=False, **mc))
    assert sorted(p.name for p in mnt.iterdir()) == ["l.h5.lock"]
    # compressed (size unknown up front): the writer stops at the frame that meets the full disk, temp file removed
    with pytest.raises(CocodagError, match=rf"No space left on device: {out}; free space"):
        export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), data=str(data), kinds=("dag", "cityscapes"),
                                    compression="gzip", progress=False, **mc))
    assert sorted(p.name for p in mnt.iterdir()) == ["l.h5.lock"]
    # what fits is written
    export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), data=str(data), limit=2, progress=False, **mc))
    with LogitsFile(out) as lf:
        assert len(lf) == 2 and lf.has_mc


def test_export_disk_full_inside_hdf5_is_one_line_exit_1(small_fs, setup):
    """When the disk fills up under HDF5 itself (another job took the space the check saw free), the writer's file
    object keeps HDF5 from seeing a failed write (after one it cannot close the file and the process crashes at exit:
    exit 139 after a flood of messages): one line, exit 1, no file."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    mnt, _ = small_fs
    d, data, ckpt, _ = setup
    out = mnt / "l.h5"
    code = textwrap.dedent("""
        import sys
        from maxent_train import export
        export._check_space = lambda *args, **kwargs: None          # simulate space taken after the check
        from maxent_train.cli import app
        app(sys.argv[1:])
    """)
    root = Path(__file__).resolve().parents[2]
    for extra in ([], ["--compression", "gzip"], ["--store-images"]):       # MC: ~200 KB a frame, 11 frames
        res = subprocess.run([sys.executable, "-c", code, "export", "--checkpoint", str(ckpt), "--data", str(data),
                              "--kinds", "dag,cityscapes", "--out", str(out), "--no-progress", "--mc-samples", "2",
                              "--logits-resolution", "label", *extra],
                             capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                               "PYTHONPATH": str(root)})
        assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: No space left on device: {out}"), res.stderr[-2000:]
        assert sorted(p.name for p in mnt.iterdir()) == ["l.h5.lock"]


# ------------------------------------------------------------------------------------------- issue 12: MC dropout
_SML_LIKE_PLUGIN = '''
import torch.nn as nn
import torch.nn.functional as F


class SMLLike(nn.Module):
    """Dropout only in an auxiliary head (SML's dsn) that the output never uses."""

    def __init__(self, num_classes=19):
        super().__init__()
        self.num_classes = num_classes
        self.trunk = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.final2 = nn.Sequential(nn.Conv2d(16, num_classes, 1))
        self.dsn = nn.Sequential(nn.Conv2d(16, 16, 1), nn.Dropout2d(0.1), nn.Conv2d(16, num_classes, 1))

    def forward_features(self, x):
        return self.trunk(x)

    def forward_head(self, feats, size):
        return F.interpolate(self.final2(feats), size=tuple(size), mode="bilinear", align_corners=True)

    def forward(self, x):
        return self.forward_head(self.forward_features(x), x.shape[-2:])


def build(num_classes=19):
    return SMLLike(num_classes)
'''


@pytest.fixture
def sml_like(tmp_path, monkeypatch):
    """A checkpoint (with metadata) of an SML-shaped plug-in model: dropout only off the output path."""
    import sys

    (tmp_path / "sml_like_plugin.py").write_text(_SML_LIKE_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    model = create_model("sml_like_plugin:build")
    ckpt = tmp_path / "sml.pt"
    torch.save({"state_dict": model.state_dict(), "metadata": {"model": "sml_like_plugin:build", "num_classes": 19}},
               ckpt)
    yield ckpt
    sys.modules.pop("sml_like_plugin", None)


def test_mc_export_refuses_a_model_without_dropout_on_its_output_path(setup, sml_like, tmp_path):
    _, data, _, _ = setup
    out = tmp_path / "mc.h5"
    with pytest.raises(MaxentError) as ei:
        export_logits(ExportOptions(checkpoint=str(sml_like), out=str(out), data=str(data), limit=2, mc_samples=4,
                                    progress=False))
    msg = str(ei.value)
    assert "model sml_like_plugin:build" in msg and "dsn.1" in msg and "--mc-dropout P" in msg and "\n" not in msg
    assert not out.exists() and not out.with_name("mc.h5.tmp").exists()
    # the explicit deviation: test-time Dropout2d(0.1) before final2.0 -> real spread, recorded in the file
    export_logits(ExportOptions(checkpoint=str(sml_like), out=str(out), data=str(data), limit=2, mc_samples=4,
                                mc_dropout=0.1, moment_order=3, progress=False))
    plain = tmp_path / "plain.h5"
    export_logits(ExportOptions(checkpoint=str(sml_like), out=str(plain), data=str(data), limit=2, progress=False))
    with LogitsFile(out) as lf, LogitsFile(plain) as ref:
        assert lf.mc_attrs["mc_dropout"] == pytest.approx(0.1)
        assert lf.mc_attrs["mc_dropout_at"] == "Dropout2d(p=0.1) on the input of final2.0"
        assert lf.mc_attrs["head_only"]
        for i in range(2):
            central = lf.mc(i)["central"]
            assert central.shape == (2, 19, 24, 24) and central[0].min() >= 0 and central[0].max() > 1e-4
            # the inserted dropout is identity for the plain logits
            np.testing.assert_array_equal(lf.frame(i).logits, ref.frame(i).logits)


def test_mc_options_are_checked(setup, tmp_path):
    d, data, ckpt, _ = setup
    out = tmp_path / "x.h5"
    for kw, needle in ((dict(mc_samples=1), "--mc-samples 1: one pass has no spread"),
                       (dict(mc_dropout=0.1), "--mc-dropout 0.1 needs --mc-samples"),
                       (dict(mc_samples=4, mc_dropout=1.5), "--mc-dropout must be in (0, 1)"),
                       (dict(mc_samples=4, mc_dropout=0.1), "model tiny_segnet already has dropout on its output "
                                                            "path (dropout)")):
        with pytest.raises(MaxentError) as ei:
            export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out), data=str(data), limit=1, progress=False,
                                        **kw))
        assert needle in str(ei.value), str(ei.value)
    assert not out.exists()


# ------------------------------------------------------------------------------------------- issue 12: model options
def test_raw_checkpoint_with_model_and_model_kwargs(setup, tmp_path):
    """A released-style file (no metadata; VainF's wrapper and numpy best_score) exports with --model and
    --model-kwargs; options recorded in the checkpoint are used, and explicit ones override them."""
    from maxent_train.export import load_model_for_export

    d, data, _, _ = setup
    torch.manual_seed(3)
    src = create_model("tiny_segnet", num_classes=19, width=16, dropout=0.2).eval()
    raw = tmp_path / "best_tiny_cityscapes_os16.pth"
    torch.save({"model_state": src.state_dict(), "cur_itrs": 100, "best_score": np.float64(0.7)}, raw)
    with pytest.raises(MaxentError, match=r"has no metadata naming the model; pass --model NAME"):
        load_model_for_export(raw)
    with pytest.raises(MaxentError, match="shape mismatch"):      # width is not in the file: the option is needed
        load_model_for_export(raw, model="tiny_segnet")
    net, meta = load_model_for_export(raw, model="tiny_segnet", model_kwargs={"width": 16, "dropout": 0.2})
    assert meta["model_kwargs"] == {"width": 16, "dropout": 0.2} and net.dropout.p == 0.2
    out = tmp_path / "raw.h5"
    export_logits(ExportOptions(checkpoint=str(raw), out=str(out), data=str(data), limit=2, model="tiny_segnet",
                                model_kwargs={"width": 16}, progress=False))
    imgs, _ = _shard_reference(data)
    with LogitsFile(out) as lf:
        assert lf.attrs["model"] == "tiny_segnet" and json.loads(lf.attrs["model_kwargs"]) == {"width": 16}
        with torch.no_grad():
            expect = src(normalize(torch.from_numpy(imgs[:2]))).numpy()
        np.testing.assert_allclose(np.stack([lf.frame(i).logits for i in range(2)]).astype(np.float32), expect,
                                   atol=2e-3, rtol=1e-3)
    # metadata's options, overridden by explicit ones
    ours = tmp_path / "model-final.pt"
    torch.save({"state_dict": src.state_dict(), "metadata": {"model": "tiny_segnet", "num_classes": 19,
                                                             "model_kwargs": {"width": 16, "dropout": 0.2}}}, ours)
    net, meta = load_model_for_export(ours)
    assert net.dropout.p == 0.2 and meta["model_kwargs"] == {"width": 16, "dropout": 0.2}
    net, meta = load_model_for_export(ours, model_kwargs={"dropout": 0.5})
    assert net.dropout.p == 0.5 and meta["model_kwargs"] == {"width": 16, "dropout": 0.5}


# ------------------------------------------------------------------------------------------- issue 10: native layout
def test_native_float32_reads_back_as_the_label_export(setup):
    """With --logits-dtype float32 the reader's upsampling of native logits is the model's own final upsampling:
    frame(i).logits equal the label-resolution export bit for bit (CPU); the MC mean commutes with the upsampling
    (the same dropout masks: seed + frame index), the central moments do not."""
    from cocodag.formats.logits import upsample_frame

    d, data, ckpt, _ = setup
    kw = dict(checkpoint=str(ckpt), data=str(data), kinds=("dag", "cityscapes"), limit=5, logits_dtype="float32",
              mc_samples=4, moment_order=3, seed=3, progress=False)
    nat, lab = d / "nat32.h5", d / "lab32.h5"
    export_logits(ExportOptions(out=str(nat), **kw))
    export_logits(ExportOptions(out=str(lab), logits_resolution="label", **kw))
    with LogitsFile(nat) as a, LogitsFile(lab) as b:
        assert a.attrs["logits_resolution"] == "native" and b.attrs["logits_resolution"] == "label"
        with h5py.File(nat, "r") as f:
            assert f["logits"].dtype == np.float32 and f["logits"].shape == (5, 19, 6, 6)
        for i in range(5):
            np.testing.assert_array_equal(a.frame(i).logits, b.frame(i).logits)
            ma, mb = a.mc(i), b.mc(i)
            rule = a.upsample_rule
            np.testing.assert_allclose(upsample_frame(ma["mean"], (24, 24), rule), mb["mean"], atol=1e-5)
            diff = np.abs(upsample_frame(ma["central"][0], (24, 24), rule) - mb["central"][0]).max()
            assert diff > 1e-2 * mb["central"][0].max()


def test_plugin_without_the_hook_and_sliding_window_fall_back_to_label_resolution(setup, sml_like, tmp_path, capsys):
    d, data, ckpt, _ = setup
    out = tmp_path / "p.h5"
    res = export_logits(ExportOptions(checkpoint=str(sml_like), out=str(out), data=str(data), limit=2,
                                      progress=False))
    assert res["logits_resolution"] == "label" and res["shape"] == (2, 19, 24, 24)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: model sml_like_plugin:build has no native-output hook (forward_native + output_upsample): "
                   "logits stored at label resolution (as with --logits-resolution label)"]
    out2 = tmp_path / "sw.h5"
    res = export_logits(ExportOptions(checkpoint=str(ckpt), out=str(out2), data=str(data), limit=2,
                                      sliding_window=True, window=16, stride=8, progress=False))
    assert res["logits_resolution"] == "label" and "--sliding-window stitches" in capsys.readouterr().err
    with LogitsFile(out2) as lf:
        assert lf.logits_resolution == "label" and lf.native_shape == (24, 24)


def test_new_options_are_checked(setup, tmp_path):
    d, data, ckpt, _ = setup
    for kw, needle in ((dict(logits_dtype="float64"), "--logits-dtype: expected float16 or float32"),
                       (dict(logits_resolution="half"), "--logits-resolution: expected native or label")):
        with pytest.raises(MaxentError, match=needle):
            export_logits(ExportOptions(checkpoint=str(ckpt), out=str(tmp_path / "x.h5"), data=str(data),
                                        progress=False, **kw))
