"""VainF DeepLabV3Plus-Pytorch models (``deeplabv3plus_resnet101_vainf``, ``deeplabv3plus_mobilenetv2_vainf``) against
numbers recorded once from the upstream code (tests/fixtures/upstream/record_vainf.py): key names/shapes/dtypes, and
the forward with deterministic synthetic weights (no weights are committed). CPU, 64x64 inputs."""
from __future__ import annotations

import json
import sys
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from maxent_train import MaxentError
from maxent_train.mc import _features_are_deterministic, mc_dropout_mode
from maxent_train.models import (
    checkpoint_filter_for,
    create_model,
    list_models,
    load_checkpoint,
    read_state_dict,
    vainf,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"
sys.path.insert(0, str(FIXTURES))
from synthetic_weights import synthetic_input, synthetic_state_dict  # noqa: E402

torch.set_num_threads(1)

NAMES = {"r101": "deeplabv3plus_resnet101_vainf", "mnv2": "deeplabv3plus_mobilenetv2_vainf"}
SUB = (slice(None), slice(None), slice(1, None, 3), slice(1, None, 3))  # as in record_vainf.py
CASES = [("r101", 16), ("r101", 8), ("mnv2", 16), ("mnv2", 8)]


@cache
def upstream_keys(short: str) -> dict:
    return json.loads((FIXTURES / f"vainf_{short}_keys.json").read_text())


@cache
def recorded(short: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"vainf_{short}_forward.npz") as z:
        return {k: z[k] for k in z.files}


@cache
def weights(short: str) -> dict[str, torch.Tensor]:
    keys = upstream_keys(short)["keys"]
    return synthetic_state_dict({k: s for k, s, _ in keys}, {k: d for k, _, d in keys})


@cache
def built_model(short: str, output_stride: int):
    """One model per case, shared by the tests (ResNet-101 takes ~0.5 s to build)."""
    return create_model(NAMES[short], output_stride=output_stride).eval()


def loaded_model(short: str, output_stride: int):
    model = built_model(short, output_stride)
    model.load_state_dict(weights(short), strict=True)
    return model


def run(model, x):
    """(stride-4 head logits, final logits) of one eval forward."""
    with torch.no_grad():
        feats = model.forward_features(x)
        head = model.classifier(*feats)
        return head, model.forward_head(feats, x.shape[-2:])


def compare(short: str, output_stride: int, head: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    rec = recorded(short)
    ref_head, ref_sub = rec[f"head_os{output_stride}"], rec[f"logits_os{output_stride}_sub"]
    return {
        "head_rel": float(np.abs(head.numpy() - ref_head).max() / np.abs(ref_head).max()),
        "logits_rel": float(np.abs(out[SUB].numpy() - ref_sub).max() / np.abs(ref_sub).max()),
        "argmax": float((out[0].argmax(0).numpy() == rec[f"argmax_os{output_stride}"]).mean()),
    }


# --------------------------------------------------------------------------------------------------------------------
def test_registered_with_options_and_filter():
    assert set(NAMES.values()) <= set(list_models("*_vainf"))
    m = create_model(NAMES["mnv2"])
    assert m.num_classes == 19 and m.output_stride == 16                     # the released files' stride
    assert [c[0].dilation for c in m.classifier.aspp.convs[1:4]] == [(6, 6), (12, 12), (18, 18)]
    m8 = create_model(NAMES["mnv2"], num_classes=5, output_stride=8, dropout=0.3)
    assert [c[0].dilation for c in m8.classifier.aspp.convs[1:4]] == [(12, 12), (24, 24), (36, 36)]
    assert m8.classifier.aspp.project[3].p == 0.3
    final = m8.get_submodule(m8.final_classifier)
    assert isinstance(final, torch.nn.Conv2d) and final.out_channels == 5 and final.kernel_size == (1, 1)
    with pytest.raises(MaxentError, match="output_stride"):
        create_model(NAMES["mnv2"], output_stride=32)
    for name in NAMES.values():
        assert checkpoint_filter_for(name) is vainf.vainf_checkpoint_filter
        cfg = vainf.PRETRAINED_CFG[name]
        assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
        assert cfg["align_corners"] is False and cfg["file"].endswith("_cityscapes_os16.pth")


@pytest.mark.parametrize("short,output_stride", CASES)
def test_keys_shapes_dtypes_equal_upstream(short, output_stride):
    up = upstream_keys(short)
    assert up["num_keys"] == len(up["keys"]) == {"r101": 674, "mnv2": 356}[short]
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
            for k, v in built_model(short, output_stride).state_dict().items()]
    assert ours == up["keys"]                                                 # names, order, shapes, dtypes


@pytest.mark.parametrize("short,output_stride", CASES)
def test_forward_equals_recorded_upstream(short, output_stride):
    x = synthetic_input(tuple(recorded(short)["input_shape"]))
    head, out = run(loaded_model(short, output_stride), x)
    assert out.shape == (1, 19, 64, 64) and head.shape == (1, 19, 16, 16)
    d = compare(short, output_stride, head, out)
    # measured: relative max diff <= 6e-6, argmax agreement 1.0 (thread count differs from the recording)
    assert d["head_rel"] < 1e-4 and d["logits_rel"] < 1e-4, d
    assert d["argmax"] >= 0.995, d


def test_concat_order_of_our_own_decoder_would_be_caught(monkeypatch):
    """The issue's silent failure: VainF's decoder concatenates [low, aspp]; our own deeplabv3plus [aspp, low].
    Both feed a 304-channel 3x3 conv, so the wrong order loads and runs: the recorded forward must catch it."""
    def swapped(self, low, high):
        low = self.project(low)
        high = torch.nn.functional.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear",
                                               align_corners=False)
        return self.classifier(torch.cat([high, low], dim=1))

    model = loaded_model("mnv2", 16)
    monkeypatch.setattr(vainf.VainfHead, "forward", swapped)
    d = compare("mnv2", 16, *run(model, synthetic_input((1, 3, 64, 64))))
    assert d["argmax"] < 0.5 and d["head_rel"] > 0.1, d


def test_our_own_deeplabv3plus_is_not_this_architecture():
    """Our ``deeplabv3plus_resnet101`` (680 keys) shares only the 624 backbone keys; renaming VainF's head keys to
    ours (the 'plain rename') leaves our second decoder conv unfilled, so a strict load refuses it."""
    own = create_model("deeplabv3plus_resnet101", output_stride=16).state_dict()
    up = {k: tuple(s) for k, s, _ in upstream_keys("r101")["keys"]}
    shared = set(own) & set(up)
    assert len(own) == 680 and len(up) == 674 and len(shared) == 624
    assert all(k.startswith("backbone.") for k in shared)

    rename = [("classifier.aspp.convs.4.1.", "aspp.pool.1.0."), ("classifier.aspp.convs.4.2.", "aspp.pool.1.1."),
              ("classifier.aspp.convs.", "aspp.branches."),
              ("classifier.aspp.project.", "aspp.project."), ("classifier.project.", "low_proj."),
              ("classifier.classifier.0.", "decoder.0.0."), ("classifier.classifier.1.", "decoder.0.1."),
              ("classifier.classifier.3.", "classifier.")]

    def plain(k: str) -> str:
        for old, new in rename:
            if k.startswith(old):
                return new + k[len(old):]
        return k

    renamed = {plain(k): s for k, s in up.items()}
    assert set(renamed) <= set(own) and all(tuple(own[k].shape) == s for k, s in renamed.items())
    assert set(own) - set(renamed) == {k for k in own if k.startswith("decoder.1.")}   # 6 keys a strict load misses


def test_own_deeplabv3plus_file_refused_for_the_vainf_name(tmp_path):
    """A checkpoint of our own ``deeplabv3plus_resnet101`` given with ``--model deeplabv3plus_resnet101_vainf``: one
    line naming mismatched keys (tiny tensors: the key names decide, nothing is loaded)."""
    own = create_model("deeplabv3plus_resnet101", output_stride=16).state_dict()
    path = tmp_path / "own.pt"
    torch.save({"model": {k: torch.zeros(1) for k in own}}, path)
    with pytest.raises(MaxentError) as ei:
        load_checkpoint(built_model("r101", 16), path, strict=True)
    msg = str(ei.value)
    assert "\n" not in msg and ("aspp.branches" in msg or "classifier.aspp" in msg), msg


def test_features_deterministic_dropout_on_the_output_path():
    model = loaded_model("mnv2", 16)
    x = synthetic_input((1, 3, 64, 64))
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.equal(model(x), model.forward_head(feats, x.shape[-2:]))
        dropouts = [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
        assert dropouts == ["classifier.aspp.project.3"]
        with mc_dropout_mode(model) as n_dropout:
            assert n_dropout == 1
            feats2, deterministic = _features_are_deterministic(model, x)
            assert deterministic and all(torch.equal(a, b) for a, b in zip(feats, feats2))
            torch.manual_seed(0)
            a, b = (model.forward_head(feats, x.shape[-2:]) for _ in range(2))
            assert not torch.equal(a, b)                                       # MC samples differ
    assert not model.training


def test_checkpoint_filter():
    sd = {"module.classifier.classifier.3.bias": torch.zeros(19), "backbone.conv1.weight": torch.zeros(1)}
    out = vainf.vainf_checkpoint_filter(sd, loaded_model("mnv2", 16))
    assert list(out) == ["classifier.classifier.3.bias", "backbone.conv1.weight"]
    with pytest.raises(MaxentError, match="separable_conv"):
        vainf.vainf_checkpoint_filter({"classifier.aspp.convs.1.0.body.0.weight": torch.zeros(1)}, None)


# --------------------------------------------------------------------------------------------------------------------
# A file exactly as upstream's main.py ``save_ckpt`` writes it

def save_like_vainf(path: Path, model_state: dict, legacy_format: bool, numpy_module: str) -> None:
    """``torch.save({'cur_itrs', 'model_state': model.module.state_dict(), 'optimizer_state', 'scheduler_state',
    'best_score': numpy.float64})`` of upstream main.py. ``legacy_format``: torch < 1.6's non-zip format (the
    2019 MobileNet release); ``numpy_module="numpy.core"``: the numpy 1.x pickle path of the scalar (both releases)."""
    params = [v for k, v in model_state.items() if not k.endswith(("running_mean", "running_var", "tracked"))]
    opt = torch.optim.SGD([{"params": params[:2], "lr": 0.01}, {"params": params[2:4], "lr": 0.1}], lr=0.1,
                          momentum=0.9, weight_decay=1e-4)
    opt.state[params[0]] = {"momentum_buffer": torch.zeros_like(params[0])}   # a trained run has these
    scheduler_state = {"power": 0.9, "max_iters": 30000, "min_lr": 1e-6, "base_lrs": [0.01, 0.1], "last_epoch": 30000,
                       "verbose": False, "_step_count": 30001, "_get_lr_called_within_step": False,
                       "_last_lr": [1e-6, 1e-6]}
    obj = {"cur_itrs": 30000, "model_state": model_state, "optimizer_state": opt.state_dict(),
           "scheduler_state": scheduler_state, "best_score": np.float64(0.7213)}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy_format)
    here = np.float64(0).__reduce__()[0].__module__.rsplit(".", 1)[0]      # this numpy's package of the scalar
    if numpy_module == here:
        return
    old, new = f"c{here}.multiarray\nscalar\n".encode(), f"c{numpy_module}.multiarray\nscalar\n".encode()
    if legacy_format:
        data = path.read_bytes()
        assert data.count(old) == 1
        path.write_bytes(data.replace(old, new))
        return
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info, data in entries:
            if info.filename.endswith("/data.pkl"):
                assert data.count(old) == 1
                data = data.replace(old, new)
            z.writestr(info, data)


def _loader_reads_vainf_layout(tmp_path: Path) -> str | None:
    """None if the shared loader reads a tiny file in VainF's layout; else why not (the loader is upgraded
    separately: the full-file tests then skip with this reason instead of failing on someone else's work)."""
    probe = tmp_path / "probe.pth"
    torch.save({"model_state": {"w": torch.zeros(1)}, "best_score": np.float64(0.5), "cur_itrs": 1}, probe)
    try:
        read_state_dict(probe)
    except MaxentError as e:
        return f"shared checkpoint loader cannot read {{'model_state', numpy best_score}} yet: {e}"
    return None


def _check_release_file(tmp_path: Path, short: str, legacy_format: bool, numpy_module: str) -> None:
    reason = _loader_reads_vainf_layout(tmp_path)
    if reason:
        pytest.skip(reason)
    path = tmp_path / f"best_{short}_cityscapes_os16.pth"
    save_like_vainf(path, weights(short), legacy_format, numpy_module)
    model = create_model(NAMES[short]).eval()                                 # output_stride 16 by default
    report = load_checkpoint(model, path, strict=True)
    assert report.ok and report.loaded == len(weights(short))
    d = compare(short, 16, *run(model, synthetic_input((1, 3, 64, 64))))
    assert d["head_rel"] < 1e-4 and d["argmax"] >= 0.995, d


@pytest.mark.parametrize("legacy_format,numpy_module", [(True, "numpy.core"), (False, "numpy.core"),
                                                         (False, "numpy._core")])
def test_release_file_layout_loads_strictly_mobilenet(tmp_path, legacy_format, numpy_module):
    _check_release_file(tmp_path, "mnv2", legacy_format, numpy_module)


@pytest.mark.slow
def test_release_file_layout_loads_strictly_resnet101(tmp_path):
    _check_release_file(tmp_path, "r101", legacy_format=False, numpy_module="numpy.core")  # 2021: zip, numpy 1.x
