"""Model registry, forward contracts and checkpoint loading (CPU, small inputs)."""
import sys
import textwrap

import pytest
import torch

from maxent_train import MaxentError
from maxent_train.models import clean_state_dict, create_model, list_models, load_checkpoint, register_model

torch.set_num_threads(1)

ALL = ["deeplabv3plus_resnet18", "deeplabv3plus_resnet50", "deeplabv3plus_resnet101", "tiny_segnet"]
#: the field's released networks (issue 12), each in its own model file
FIELD = ["deeplabv3plus_wrn38", "deeplabv3plus_resnet101_sml", "deeplabv3plus_resnet101_vainf",
         "deeplabv3plus_mobilenetv2_vainf"]


def test_registry_names_and_patterns():
    assert set(ALL) | set(FIELD) <= set(list_models())
    assert list_models("deeplab*") == sorted(n for n in ALL + FIELD if n.startswith("deeplab"))
    assert list_models("nope*") == []


def test_unknown_name_suggests_close_matches():
    with pytest.raises(MaxentError, match="deeplabv3plus_resnet50") as ei:
        create_model("deeplabv3plus_resnet05")
    assert "unknown model" in str(ei.value) and "\n" not in str(ei.value)


def test_none_kwargs_are_dropped_and_bad_kwargs_named():
    m = create_model("tiny_segnet", num_classes=5, dropout=None)
    assert m.num_classes == 5 and m.dropout.p == 0.1
    with pytest.raises(MaxentError, match="tiny_segnet"):
        create_model("tiny_segnet", no_such_arg=3)


def test_plugin_module_factory(tmp_path, monkeypatch):
    (tmp_path / "my_net_plugin.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        class Net(nn.Module):
            def __init__(self, num_classes, scale):
                super().__init__()
                self.conv = nn.Conv2d(3, num_classes, 1)
                self.scale = scale
            def forward(self, x):
                return self.conv(x) * self.scale
        def build(num_classes=19, scale=1.0):
            return Net(num_classes, scale)
        not_callable = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    m = create_model("my_net_plugin:build", num_classes=7, scale=2.0)
    assert m.num_classes == 7 and m.scale == 2.0  # num_classes set by create_model for plug-ins lacking it
    assert m(torch.zeros(1, 3, 8, 8)).shape == (1, 7, 8, 8)
    with pytest.raises(MaxentError, match="no attribute"):
        create_model("my_net_plugin:missing")
    with pytest.raises(MaxentError, match="not callable"):
        create_model("my_net_plugin:not_callable")
    with pytest.raises(MaxentError, match="cannot import"):
        create_model("no_such_module_xyz:build")
    sys.modules.pop("my_net_plugin", None)


@pytest.mark.parametrize("name,size,os_", [
    ("tiny_segnet", (66, 94), None),
    ("deeplabv3plus_resnet18", (64, 80), 8),
    ("deeplabv3plus_resnet18", (64, 64), 16),
    ("deeplabv3plus_resnet50", (64, 64), 16),
    ("deeplabv3plus_resnet101", (64, 64), 16),
])
def test_forward_shape_and_feature_head_split(name, size, os_):
    torch.manual_seed(0)
    kw = {"output_stride": os_} if os_ else {}
    m = create_model(name, num_classes=6, **kw).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        y = m(x)
        y2 = m.forward_head(m.forward_features(x), x.shape[-2:])
    assert y.shape == (2, 6, *size) and m.num_classes == 6
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    # all stochastic layers live in the head: in train mode, features are deterministic given BN state
    drops = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.modules.dropout._DropoutNd)]
    assert drops == ["dropout"]


def test_output_stride_changes_resolution():
    m8 = create_model("deeplabv3plus_resnet18", output_stride=8).eval()
    m16 = create_model("deeplabv3plus_resnet18", output_stride=16).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, h8 = m8.backbone(x)
        _, h16 = m16.backbone(x)
    assert h8.shape[-1] == 8 and h16.shape[-1] == 4
    with pytest.raises(MaxentError, match="output_stride"):
        create_model("deeplabv3plus_resnet18", output_stride=32)


def _randomized(model):
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(torch.randn_like(p))
    return model


def test_load_plain_and_wrapped_dataparallel_checkpoint(tmp_path):
    src = _randomized(create_model("tiny_segnet", num_classes=5))
    plain = tmp_path / "plain.pt"
    torch.save(src.state_dict(), plain)
    wrapped = tmp_path / "metaood.pth"  # meta-ood: {"state_dict": state_dict of a DataParallel model}
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}, "epoch": 3}, wrapped)
    ours = tmp_path / "ours.pt"
    torch.save({"model": src.state_dict(), "step": 10}, ours)
    for path in (plain, wrapped, ours):
        dst = create_model("tiny_segnet", num_classes=5)
        rep = load_checkpoint(dst, path)
        assert rep.ok and rep.loaded == len(src.state_dict())
        for k, v in src.state_dict().items():
            assert torch.equal(dst.state_dict()[k], v), k


def test_clean_state_dict_strips_prefixes():
    sd = {"module.a.weight": torch.zeros(1), "b": torch.ones(1), "_orig_mod.module.c": torch.ones(2)}
    assert sorted(clean_state_dict(sd)) == ["a.weight", "b", "c"]


def test_strict_mismatch_lists_keys(tmp_path):
    src = create_model("tiny_segnet").state_dict()
    src.pop("classifier.bias")
    src["extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save(src, path)
    with pytest.raises(MaxentError) as ei:
        load_checkpoint(create_model("tiny_segnet"), path)
    msg = str(ei.value)
    assert "bad.pt" in msg and "classifier.bias" in msg and "extra.weight" in msg and "\n" not in msg
    # non-strict loads the rest and reports, never silently
    rep = load_checkpoint(create_model("tiny_segnet"), path, strict=False)
    assert rep.missing == ["classifier.bias"] and rep.unexpected == ["extra.weight"]


def test_class_count_mismatch_message(tmp_path):
    path = tmp_path / "c20.pt"
    torch.save({"state_dict": create_model("tiny_segnet", num_classes=20).state_dict()}, path)
    with pytest.raises(MaxentError, match=r"model has 19 classes, checkpoint has 20") as ei:
        load_checkpoint(create_model("tiny_segnet", num_classes=19), path)
    assert "classifier.weight" in str(ei.value) and "c20.pt" in str(ei.value)


def test_unreadable_checkpoints(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(MaxentError, match="corrupt.pt"):
        load_checkpoint(create_model("tiny_segnet"), bad)
    with pytest.raises(MaxentError, match="does not exist"):
        load_checkpoint(create_model("tiny_segnet"), tmp_path / "missing.pt")
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    with pytest.raises(MaxentError, match="no state_dict"):
        load_checkpoint(create_model("tiny_segnet"), other)
    # weights_only=True refuses arbitrary pickled objects
    import collections
    evil = tmp_path / "obj.pt"
    torch.save({"state_dict": collections.Counter(a=1)}, evil)
    with pytest.raises(MaxentError, match="obj.pt"):
        load_checkpoint(create_model("tiny_segnet"), evil)


def test_non_checkpoint_files_are_named_in_one_line(tmp_path):
    """A text file (or any file torch.save did not write) as a checkpoint: one line naming it, never KeyError: 101."""
    import zipfile

    import numpy as np

    text = tmp_path / "notes.txt"
    text.write_text("hello world\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    np.save(tmp_path / "arr.npy", np.zeros(3))
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("a.txt", "x")
    cases = {text: "a text file", tmp_path / "empty.pt": "an empty file", tmp_path / "arr.npy": "a NumPy .npy file",
             tmp_path / "other.zip": "a zip archive without torch.save's layout"}
    for path, what in cases.items():
        with pytest.raises(MaxentError) as ei:
            load_checkpoint(create_model("tiny_segnet"), path)
        msg = str(ei.value)
        assert msg.startswith(f"{path}: not a torch checkpoint ({what}") and "\n" not in msg, msg
    # a torch checkpoint cut short: damaged, not "not a checkpoint"
    good = tmp_path / "good.pt"
    torch.save(create_model("tiny_segnet").state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MaxentError, match=r"cut.pt: cannot read checkpoint .*damaged or truncated"):
        load_checkpoint(create_model("tiny_segnet"), cut)
    with pytest.raises(MaxentError, match="is a folder"):
        load_checkpoint(create_model("tiny_segnet"), tmp_path)
    # the existing messages stay: a whole pickled module is refused, a raw pickle is a legacy checkpoint
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(MaxentError, match="refused: not a plain tensor checkpoint"):
        load_checkpoint(create_model("tiny_segnet"), tmp_path / "module.pt")
    import pickle
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    with pytest.raises(MaxentError, match="legacy pickled checkpoints are refused"):
        load_checkpoint(create_model("tiny_segnet"), tmp_path / "raw.pkl")


def test_torchvision_layout_backbone_weights(tmp_path):
    from maxent_train.models.resnet import ResNet
    ref = _randomized(ResNet("resnet18", output_stride=32 // 2))
    sd = dict(ref.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # torchvision's classifier: ignored
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(sd, path)
    m = create_model("deeplabv3plus_resnet18", backbone_weights=str(path))
    for k, v in ref.state_dict().items():
        assert torch.equal(m.backbone.state_dict()[k], v), k
    sd.pop("layer1.0.conv1.weight")
    torch.save(sd, path)
    with pytest.raises(MaxentError, match="layer1.0.conv1.weight"):
        create_model("deeplabv3plus_resnet18", backbone_weights=str(path))


# ------------------------------------------------------------------------------------ released checkpoints (issue 12)
def _save(obj, path, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _assert_loaded(dst, src):
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("layout", ["state_dict", "model_state", "model", "net", "nested", "branch1", "plain"])
def test_released_wrappers_and_prefixes_load_strictly(tmp_path, layout, legacy):
    """Each wrapper / prefix of the field's releases, in the zip and the pre-1.6 ("legacy") format."""
    import numpy as np

    src = _randomized(create_model("tiny_segnet", num_classes=5, width=8))
    sd = src.state_dict()
    dp = {"module." + k: v for k, v in sd.items()}
    obj = {
        "state_dict": {"state_dict": dp, "epoch": 3, "mean_iu": np.float64(0.71), "command": "train.py --x"},
        "model_state": {"model_state": sd, "cur_itrs": 30000, "best_score": np.float64(0.76),
                        "optimizer_state": {"state": {}, "param_groups": []}},
        "model": {"model": dp},
        "net": {"net": sd, "acc": np.float32(0.5), "step": np.int64(7)},
        "nested": {"model": {"state_dict": dp}, "epoch": 1},
        "branch1": {"model": {"module.branch1." + k: v for k, v in sd.items()}},      # PEBAL's Network wrapper
        "plain": dp,
    }[layout]
    path = _save(obj, tmp_path / f"{layout}.pth", legacy)
    dst = create_model("tiny_segnet", num_classes=5, width=8)
    rep = load_checkpoint(dst, path)
    assert rep.ok and rep.loaded == len(sd)
    _assert_loaded(dst, src)


def test_nvidia_style_file_numpy_scalars_legacy_format_and_criterion(tmp_path, capsys):
    """NVIDIA's trainer: {'state_dict' of a DataParallel model incl. module.criterion.nll_loss.weight,
    'mean_iu': numpy.float64, 'epoch', 'command', 'optimizer'} in the pre-zip format, written by numpy 1.x (whose
    scalars pickle as numpy.core.multiarray.scalar): loads, the loss weight dropped with a one-line note."""
    import numpy as np

    src = _randomized(create_model("deeplabv3plus_resnet18", num_classes=19))
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    sd["module.criterion.nll_loss.weight"] = torch.ones(19)
    obj = {"state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
           "epoch": 175, "mean_iu": np.float64(0.8), "command": "python train.py --arch network.deepv3.DeepWV3Plus"}
    path = _save(obj, tmp_path / "cityscapes_best.pth", legacy=True)
    data = path.read_bytes()
    assert b"numpy._core.multiarray\nscalar" in data or b"numpy.core.multiarray\nscalar" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
    dst = create_model("deeplabv3plus_resnet18", num_classes=19)
    capsys.readouterr()
    rep = load_checkpoint(dst, path)
    assert rep.ok and rep.loaded == len(src.state_dict())
    _assert_loaded(dst, src)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "criterion.nll_loss.weight" in err[0] and "training-only" in err[0], err
    from maxent_train.models import read_checkpoint

    state, meta = read_checkpoint(path)
    assert meta == {} and "criterion.nll_loss.weight" in state      # reading keeps it; loading drops it


def test_numpy_scalar_pickles_load_with_weights_only_and_arrays_stay_refused(tmp_path):
    import numpy as np

    from maxent_train.models._helpers import load_file

    vals = {"f64": np.float64(0.5), "f32": np.float32(1.5), "f16": np.float16(2), "i64": np.int64(3),
            "u8": np.uint8(4), "b": np.bool_(True)}
    for legacy in (False, True):
        got = load_file(_save({"state_dict": {"w": torch.zeros(1)}, **vals}, tmp_path / f"n{legacy}.pt", legacy))
        assert {k: (type(v), v) for k, v in got.items() if k in vals} == {k: (type(v), v) for k, v in vals.items()}
    # a numpy array needs numpy's array reconstruction: not on our allow-list, refused by name, not as "legacy"
    path = _save({"state_dict": {"w": torch.zeros(1)}, "iou": np.zeros(3)}, tmp_path / "arr.pt")
    with pytest.raises(MaxentError) as ei:
        load_file(path)
    msg = str(ei.value)
    assert "refused" in msg and "multiarray._reconstruct" in msg and "legacy" not in msg and "\n" not in msg


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, kind):
    import pickle

    marker = tmp_path / "pwned"
    obj = {"state_dict": {"w": torch.zeros(1)}, "x": _RunsCode(marker)}
    path = tmp_path / f"evil-{kind}.pth"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"x": obj["x"]}, protocol=2))
    else:
        _save(obj, path, legacy=kind == "legacy")
    assert not marker.exists()
    with pytest.raises(MaxentError) as ei:
        load_checkpoint(create_model("tiny_segnet"), path)
    msg = str(ei.value)
    assert not marker.exists()
    assert msg.startswith(f"{path}: refused") and "open" in msg and "nothing was executed" in msg, msg
    assert "legacy" not in msg[len(str(path)):] and "\n" not in msg


def test_json_and_hdf5_as_checkpoint_are_one_line(tmp_path):
    import h5py

    js = tmp_path / "weights.json"
    js.write_text('{"state_dict": {"w": [1, 2]}}')
    with h5py.File(tmp_path / "weights.h5", "w") as f:
        f["w"] = [1, 2]
    for path, what in ((js, "a text file"), (tmp_path / "weights.h5", "an HDF5 file")):
        with pytest.raises(MaxentError) as ei:
            load_checkpoint(create_model("tiny_segnet"), path)
        assert str(ei.value).startswith(f"{path}: not a torch checkpoint ({what}") and "\n" not in str(ei.value)


def test_other_family_is_named_in_one_line(tmp_path):
    from maxent_train.models import guess_family

    z = torch.zeros(1)
    families = {
        "deeplabv3plus_wrn38": ["mod1.conv1.weight", "mod2.block1.convs.conv1.weight", "aspp.features.0.0.weight",
                                "bot_fine.weight", "final.6.weight"],
        "deeplabv3plus_resnet101_sml": ["layer0.0.weight", "layer1.0.conv1.weight", "aspp.features.0.0.weight",
                                        "dsn.0.weight", "final2.0.weight"],
        "deeplabv3plus_resnet101_vainf": ["backbone.conv1.weight", "backbone.layer1.0.conv1.weight",
                                          "classifier.aspp.convs.0.0.weight", "classifier.classifier.3.weight"],
        "deeplabv3plus_mobilenetv2_vainf": ["backbone.low_level_features.0.0.weight",
                                            "backbone.high_level_features.4.conv.0.0.weight",
                                            "classifier.aspp.convs.0.0.weight", "classifier.classifier.3.weight"],
    }
    for name, keys in families.items():
        assert guess_family(keys)[1] == name, name
    assert guess_family(create_model("tiny_segnet").state_dict())[1] == "tiny_segnet"
    assert guess_family(create_model("deeplabv3plus_resnet18").state_dict())[1] == "deeplabv3plus_resnet18"
    assert guess_family(["a.weight", "b.bias"]) is None
    # through a load: the first mismatched keys and the family, in one line
    path = _save({"state_dict": {"module." + k: z for k in families["deeplabv3plus_wrn38"]}, "mean_iu": 0.8},
                 tmp_path / "cityscapes_best.pth", legacy=True)
    with pytest.raises(MaxentError) as ei:
        load_checkpoint(create_model("tiny_segnet"), path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: checkpoint does not match the model tiny_segnet: ") and "\n" not in msg
    assert "mod1.conv1.weight" in msg and "stem.0.0.weight" in msg
    assert "looks like an NVIDIA DeepWV3Plus" in msg and "use --model deeplabv3plus_wrn38" in msg
    tiny = _save(create_model("tiny_segnet").state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(MaxentError, match="looks like a tiny_segnet checkpoint of ours: use --model tiny_segnet"):
        load_checkpoint(create_model("deeplabv3plus_resnet18"), tiny)


def _swap_prefix(state_dict, model):
    """A test family's checkpoint filter: its upstream calls our ``classifier`` ``cls_head``."""
    return {("classifier." + k[len("cls_head."):] if k.startswith("cls_head.") else k): v
            for k, v in state_dict.items()}


@register_model(checkpoint_filter=_swap_prefix)
def _issue12_filtered_tiny(num_classes: int = 19, **kwargs):
    return create_model("tiny_segnet", num_classes=num_classes, **kwargs)


def test_registered_checkpoint_filter_runs_before_the_strict_load(tmp_path):
    src = _randomized(create_model("tiny_segnet", num_classes=5, width=8))
    upstream = {("cls_head." + k[len("classifier."):] if k.startswith("classifier.") else k): v
                for k, v in src.state_dict().items()}
    path = _save({"model_state": {"module." + k: v for k, v in upstream.items()}}, tmp_path / "up.pth")
    dst = create_model("_issue12_filtered_tiny", num_classes=5, width=8)
    assert dst.registry_name == "_issue12_filtered_tiny"
    assert load_checkpoint(dst, path).ok                        # name found on the model (create_model set it)
    _assert_loaded(dst, src)
    with pytest.raises(MaxentError, match="cls_head.weight"):   # without the filter: a strict mismatch
        load_checkpoint(create_model("tiny_segnet", num_classes=5, width=8), path)
    # our own key names (a fine-tuned model-final.pt) load as they are
    ours = _save({"state_dict": src.state_dict(), "metadata": {}}, tmp_path / "ours.pt")
    assert load_checkpoint(create_model("_issue12_filtered_tiny", num_classes=5, width=8), ours).ok


def test_parse_model_kwargs():
    from maxent_train.models import parse_model_kwargs

    assert parse_model_kwargs(None) == parse_model_kwargs("") == {}
    got = parse_model_kwargs("output_stride=16, dropout=0.1,flag=true,off=False,name=abc,q='x y',n=none,e=1e-3")
    assert got == {"output_stride": 16, "dropout": 0.1, "flag": True, "off": False, "name": "abc", "q": "x y",
                   "n": None, "e": 1e-3}
    assert type(got["output_stride"]) is int and type(got["dropout"]) is float
    assert parse_model_kwargs('{"output_stride": 16, "dropout": 0.5}') == {"output_stride": 16, "dropout": 0.5}
    assert parse_model_kwargs({"output_stride": 8}) == {"output_stride": 8}
    for bad, needle in (("output_stride", "cannot parse 'output_stride'"), ("a=1,,b=2", "cannot parse ''"),
                        ("1x=2", "cannot parse"), ('{"a": 1', "not valid JSON"), ("[1, 2]", "cannot parse"),
                        ("a=1,a=2", "a given twice"), ('{"a b": 1}', "identifiers")):
        with pytest.raises(MaxentError, match="--model-kwargs") as ei:
            parse_model_kwargs(bad)
        assert needle in str(ei.value) and "\n" not in str(ei.value), (bad, str(ei.value))


# ------------------------------------------------------------------------------------------ native-resolution output
def _shipped_models() -> list[str]:
    """Every model registered by maxent_train.models itself (not those other test modules register)."""
    from maxent_train.models._registry import _MODULE_OF

    return [n for n in list_models() if _MODULE_OF[n].startswith("maxent_train.models.")]


@pytest.mark.parametrize("name", _shipped_models())
def test_every_model_exposes_its_native_logits_and_upsampling_rule(name):
    """``forward(x) == F.interpolate(forward_native(x), x.shape[-2:], **output_upsample)`` bit for bit, and a split
    model's ``forward_head(feats, None)`` is ``forward_native``: what export stores and the reader upsamples."""
    import torch.nn.functional as F

    from maxent_train.models import native_output_rule

    torch.manual_seed(0)
    m = create_model(name, num_classes=5).eval()
    rule = native_output_rule(m)
    expected_ac = name in ("deeplabv3plus_wrn38", "deeplabv3plus_resnet101_sml")
    assert rule == {"mode": "bilinear", "align_corners": expected_ac}
    x = torch.randn(1, 3, 50, 66)
    with torch.no_grad():
        native = m.forward_native(x)
        full = m(x)
        if hasattr(m, "forward_features"):
            torch.testing.assert_close(m.forward_head(m.forward_features(x)), native, rtol=0, atol=0)
    assert native.shape[:2] == (1, 5) and native.shape[-1] < 66 and full.shape == (1, 5, 50, 66)
    torch.testing.assert_close(F.interpolate(native, size=(50, 66), **rule), full, rtol=0, atol=0)


def test_native_output_rule_of_plugins():
    from maxent_train.models import native_output_rule

    plain = torch.nn.Conv2d(3, 4, 1)
    assert native_output_rule(plain) is None            # no hook: export falls back to label resolution
    plain.forward_native = plain.forward
    plain.output_upsample = {"mode": "bilinear", "align_corners": "yes"}
    with pytest.raises(MaxentError, match="output_upsample: upsampling align_corners 'yes'"):
        native_output_rule(plain)


# ------------------------------------------------------------------------------------------ classifier block
@pytest.mark.parametrize("name", _shipped_models())
def test_every_family_declares_its_classifier_block_and_it_grows_to_the_c_plus_1_network(name):
    """The block's globs match parameters (the classifier convs' among them); growing its convs by one output gives
    exactly the state_dict layout of ``create_model(name, num_classes=C + 1)`` (so a grown run loads back), with the
    first C rows kept and the new row drawn like PEBAL's ``kaiming_normal_`` (bias: kept, new entry 0)."""
    import fnmatch

    from maxent_train.models import classifier_block_for, grow_classifier

    block = classifier_block_for(name)
    assert block is not None and block.params and block.convs
    big = name in ("deeplabv3plus_wrn38", "deeplabv3plus_resnet101_sml", "deeplabv3plus_resnet101",
                   "deeplabv3plus_resnet101_vainf")
    with torch.device("meta" if big else "cpu"):   # names and shapes of the big ones only
        torch.manual_seed(0)
        model = create_model(name, num_classes=5)
        wanted = {k: v.shape for k, v in create_model(name, num_classes=6).state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    for pattern in block.params:
        assert any(fnmatch.fnmatchcase(n, pattern) for n in names), pattern
    assert any(fnmatch.fnmatchcase(f"{block.convs[0]}.weight", p) for p in block.params)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grow_classifier(model, block.convs, 5)
    assert {k: v.shape for k, v in model.state_dict().items()} == wanted and model.num_classes == 6
    if not big:
        state = model.state_dict()
        for conv in block.convs:
            w = state[f"{conv}.weight"]
            assert torch.equal(w[:5], before[f"{conv}.weight"])
            fan_in = w[0].numel()
            assert 0.5 < float(w[5].std()) / (2.0 / fan_in) ** 0.5 < 1.5 or fan_in < 30
            if f"{conv}.bias" in state:
                assert torch.equal(state[f"{conv}.bias"][:5], before[f"{conv}.bias"]) and state[f"{conv}.bias"][5] == 0
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 6, 32, 32)


def test_grow_classifier_refuses_a_wrong_declaration():
    from maxent_train.models import grow_classifier

    model = create_model("tiny_segnet", num_classes=5)
    with pytest.raises(MaxentError, match="'fuse' is not a Conv2d"):
        grow_classifier(model, ("fuse",), 5)
    with pytest.raises(MaxentError, match="classifier has 5 outputs, expected 7"):
        grow_classifier(model, ("classifier",), 7)
