"""The README's demo command, end to end at toy scale: every stage runs through the real CLIs."""
import json

import pytest
from typer.testing import CliRunner

from cocodag.formats.logits import LogitsFile
from cocodag_apps.cli import cocodag_app
from cocodag_apps.demo import META_RUNS, OBJECTIVE_RUNS, RUNS, DemoConfig, run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    cfg = DemoConfig(out=tmp_path / "demo", frames=6, val_frames=2, anomaly_frames=3, coco_images=10,
                     frame_size="256x128", coco_image_size="160x120", crop=64, dag_samples=8, crops_per_frame=2,
                     baseline="train", baseline_steps=6, baseline_lr=1e-3, steps=3, batch_size=4, mc_samples=2,
                     oodmc_train_crops=6, sml_train_crops=8, workers=1, progress=False, overlays=1)
    summary = run_demo(cfg)
    report = tmp_path / "demo" / "report"
    md = (report / "results.md").read_text()
    for heading in ("Table 1 shape", "Table 2 shape", "Table 3 shape", "Training objectives", "component-level",
                    "mIoU", "FP before"):
        assert heading in md
    assert set(summary["results"]) == {"baseline", *(name for name, _, _ in RUNS + OBJECTIVE_RUNS)}
    for name, objective, _ in OBJECTIVE_RUNS:       # the abstention objectives, scored by their own score
        assert set(summary["results"][name][0]) == {"pebal"}
        assert f"| {objective} | with" in md and f"| {objective} | without" in md
        with LogitsFile(tmp_path / "demo" / "runs" / f"{name}-s0" / "test.h5") as lf:    # grown by fit
            assert lf.num_classes == 19 and lf.abstention_channel == 19
    # meta classification of the entropy models: the counts always; meta numbers, or the reason they are missing
    # (a toy set may have too few segments to fit the classifier; the demo goes on)
    for name in META_RUNS:
        doc = summary["meta"][name][0]
        assert doc["segments"] >= 0 and doc["fp_before"] >= 0 and doc["fn_before"] >= 0
        assert (doc["meta_auroc"] is None) == ("error" in doc)
    base = summary["results"]["baseline"][0]
    assert {"msp", "maxlogit", "entropy", "sml", "vde", "oodmc", "pebal"} <= set(base)
    for m in base.values():
        assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["ap"] <= 1.0
    assert (report / "heatmaps.png").is_file()
    assert (tmp_path / "demo" / "runs" / "entropy_DAG-s0" / "report" / "roc.png").is_file()
    # a second invocation finds every stage done and only rewrites the report
    capsys.readouterr()
    again = run_demo(cfg)
    assert "already done" in capsys.readouterr().err
    for key in ("results", "meta"):
        assert json.dumps(again[key], sort_keys=True) == json.dumps(summary[key], sort_keys=True)
    # one orchestrator: `cocodag recipe run demo` with the demo's options as overrides is the same run (every step
    # done, none refused) and writes the same tables through the recipe's own results writer
    r = CliRunner().invoke(cocodag_app, ["recipe", "run", "demo", *cfg.overrides(), "--out", str(cfg.out)])
    assert r.exit_code == 0, r.output
    ran = [line for line in r.stderr.splitlines() if line.startswith("  $ ")]
    assert len(ran) == 1 and " compare " in ran[0], ran      # only the leaderboard, rewritten on every run
    via_recipe = json.loads((report / "results.json").read_text())
    for key in ("results", "meta", "miou"):
        assert json.dumps(via_recipe[key], sort_keys=True) == json.dumps(summary[key], sort_keys=True)
    md2 = (report / "results.md").read_text()
    assert md2.split("## Stage times")[0] == md.split("## Stage times")[0]
