"""Model registry, forward contracts and checkpoint loading (CPU, small inputs)."""
import sys
import textwrap

import pytest
import torch

from maxent_train import MaxentError
from maxent_train.models import clean_state_dict, create_model, list_models, load_checkpoint

torch.set_num_threads(1)

ALL = ["deeplabv3plus_resnet18", "deeplabv3plus_resnet50", "deeplabv3plus_resnet101", "tiny_segnet"]


def test_registry_names_and_patterns():
    assert set(ALL) <= set(list_models())
    assert list_models("deeplab*") == sorted(n for n in ALL if n.startswith("deeplab"))
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
