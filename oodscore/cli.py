"""`oodscore` command line: thin typer shells over library functions (oodscore.report, oodscore.compare,
oodscore.fit, oodscore.io, oodscore.meta_report, cocodag.formats.evalsets). Every error of ours becomes one red
``error:`` line and exit code 1.

``evaluate``'s options are :class:`oodscore.options.EvalOptions`, built here and checked there; each choice option is
annotated with that module's ``Literal`` alias (typer lists the choices and refuses others). The ``--method`` choices
come from the score registry (``oodscore.scores.METHODS``); an unknown name is reported by the library as one
``error:`` line with close matches. The library modules are imported inside the commands: ``--help`` stays quick.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cocodag.cli_utils import user_errors
from cocodag.device import resolve_device
from cocodag.lock import OutputLock
from cocodag.outputs import disk_errors, prepare_output

from . import OodscoreError
from .options import ComponentRule, EvalOptions, ProtocolChoice, Region, SmlBorder, ThresholdKind, Track
from .published import Leaderboard  # the names only: the leaderboard file is read when a command asks for it
from .scores import METHODS  # the registry's names only: no scorer (nor torch) is imported here

app = typer.Typer(help="Anomaly scores and exact metrics from saved logits or score maps.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False, add_completion=False)
datasets_app = typer.Typer(help="Evaluation-set presets: list them, convert a set to the documented 0/1/255 layout.",
                           no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)
app.add_typer(datasets_app, name="datasets")


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


@app.command("fit-sml")
def fit_sml(
    out: Annotated[Path | None, typer.Option("--out", help="Write the SML statistics here (JSON).")] = None,
    logits: Annotated[Path | None, typer.Option(
        "--logits", help="Training-set logits.h5: stats over every pixel grouped by predicted class.")] = None,
    import_official: Annotated[tuple[Path, Path] | None, typer.Option(
        "--import-official", help="MEAN.npy VAR.npy of the official SML code (pickled dicts {trainId: value}; "
        "loading them executes code: only use files you trust).")] = None,
    stats: Annotated[Path | None, typer.Option(
        "--stats", help="Existing stats JSON to re-export (with --export-official).")] = None,
    export_official: Annotated[Path | None, typer.Option(
        "--export-official", help="Also write DIR/cityscapes_mean.npy and cityscapes_var.npy (official format).")
    ] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu, cuda or cuda:N (default: cpu).")] = None,
) -> None:
    """Fit (or import) SML statistics: per predicted class, mean and variance of the max logit."""
    with user_errors():
        from .fit import fit_sml as run_fit_sml
        from .scores import SMLStats

        sources = [s for s in (logits, import_official, stats) if s is not None]
        if len(sources) != 1:
            raise OodscoreError("give exactly one of --logits FILE, --import-official MEAN.npy VAR.npy, --stats FILE")
        if out is None and export_official is None:
            raise OodscoreError("nothing to write: give --out FILE and/or --export-official DIR")
        if stats is not None and not stats.is_file():
            raise OodscoreError(f"--stats {stats}: " + ("is a folder, expected the JSON file of `oodscore fit-sml`"
                                                       if stats.is_dir() else "SML stats file not found"))
        if out is not None:             # checked before the work; the file itself is written atomically
            prepare_output(out, kind="file", option="--out")
        if export_official is not None:
            prepare_output(export_official, kind="dir", option="--export-official")
        if device is not None:
            resolve_device(device)           # CUDA asked for on a machine without it: one line, before the work
        if logits is not None:
            st = run_fit_sml(logits, device=device)
        elif import_official is not None:
            st = SMLStats.import_official(*import_official)
        else:
            st = SMLStats.load(stats)
        if out is not None:
            with disk_errors(out, option="--out"):
                st.save(out)
            _echo(f"wrote {out}: {st!r}")
        if export_official is not None:     # two files: one job at a time in that folder
            with OutputLock(export_official, option="--export-official"), \
                    disk_errors(export_official, option="--export-official"):
                m, v = st.export_official(export_official)
            _echo(f"wrote {m} and {v}")


@app.command("fit-oodmc")
def fit_oodmc(
    logits: Annotated[Path, typer.Option("--logits", help="Training logits.h5 with the mc/* block and OOD labels.")],
    out: Annotated[Path, typer.Option("--out", help="Write the fitted model here (a numpy archive).")],
    classifier: Annotated[str, typer.Option(
        "--classifier", help="linear-svc (default), logistic, rbf-svc or sgd.")
    ] = "linear-svc",
    svm_points_num: Annotated[int, typer.Option("--svm-points-num", help="Training pixels, balanced ID/OOD.")
                              ] = 500_000,
    moment_weight: Annotated[float, typer.Option("--moment-weight", help="w in [(1-w)H, w m1, ..., w mK].")] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pixel sampling and the classifier.")] = 0,
) -> None:
    """Fit the OODMC classifier on MC-dropout moments (features from the file's mc/* datasets)."""
    with user_errors():
        from .fit import fit_oodmc as run_fit_oodmc
        from .io import save_oodmc

        prepare_output(out, kind="file", option="--out")       # before the fit; the file is written atomically
        model = run_fit_oodmc(logits, classifier=classifier, svm_points_num=svm_points_num,
                              moment_weight=moment_weight, random_state=seed)
        with disk_errors(out, option="--out"):
            save_oodmc(model, out)
        _echo(f"wrote {out}: {model.n_samples_['id']} ID + {model.n_samples_['ood']} OOD training pixels")


def _fmt(v) -> str:
    """A number of a summary line: floats to 4 decimals, None as ``-``."""
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _print_summary(res) -> None:
    keys = ("auroc", "ap", "fpr95", "f1", "component_mean_f1")
    for m, r in res.results.items():
        parts = [f"{k}={r[k]:.4f}" for k in keys if isinstance(r.get(k), float)]
        typer.echo(f"{m:>10}  " + "  ".join(parts))
        if "meta_segments" in r:        # --meta: the segment counts beside the pixel metrics
            n = {k: _fmt(r.get(f"meta_{k}")) for k in ("segments", "fp_before", "fp_left", "fn_before", "fn_after",
                                                        "auroc")}
            typer.echo(f"{'':>10}  meta: {n['segments']} segments, false positives {n['fp_before']} -> "
                       f"{n['fp_left']}, false negatives {n['fn_before']} -> {n['fn_after']}, meta AUROC "
                       f"{n['auroc']}")
    typer.echo(f"report: {res.out_dir}")


def _check_inputs(*, logits: Path | None, scores: Path | None, dataset: str | None,
                  method: list[str] | None) -> None:
    """The inputs of ``evaluate``: --logits (with --method) or --scores (with --dataset), checked before anything is
    opened (the options are :class:`~oodscore.options.EvalOptions`'s to check)."""
    if (logits is None) == (scores is None):
        raise OodscoreError("give either --logits FILE (with --method) or --scores PATH (with --dataset)")
    if scores is not None and dataset is None:
        raise OodscoreError("--scores needs --dataset PRESET:ROOT for the ground truth")
    if scores is not None and method:
        raise OodscoreError("--method is for --logits; --scores evaluates the given maps as they are")
    if logits is not None and dataset is not None:
        raise OodscoreError("--dataset is for --scores; a logits file carries its own labels")


@app.command("evaluate")
def evaluate(
    out: Annotated[Path, typer.Option("--out", help="Report folder (metrics.json/csv, roc.png, pr.png, overlays/).")],
    logits: Annotated[Path | None, typer.Option("--logits", help="Test logits.h5 to score.")] = None,
    method: Annotated[list[str] | None, typer.Option(
        "--method", metavar="METHOD", help=f"Score method, repeatable: {' | '.join(METHODS)}.")] = None,
    scores: Annotated[Path | None, typer.Option(
        "--scores", help="Score maps of any method: folder of <name>.npy|.npz|.hdf5 or one scores.h5 "
        "(instead of --logits; needs --dataset).")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Ground truth for --scores as PRESET:ROOT (see `oodscore datasets list`).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Method name for --scores in the report.")] = None,
    resize_scores: Annotated[bool, typer.Option(
        "--resize-scores", help="Resize --scores maps to the label size (bilinear) instead of failing.")] = False,
    sml_stats: Annotated[Path | None, typer.Option("--sml-stats", help="SML stats JSON (for sml, vde).")] = None,
    boundary_iters: Annotated[int, typer.Option(
        "--boundary-iters", help="SML boundary-suppression iterations (0 disables).")] = 4,
    smoothing: Annotated[bool, typer.Option("--smoothing/--no-smoothing", help="SML dilated smoothing.")] = True,
    vde_threshold: Annotated[float | None, typer.Option(
        "--vde-threshold", help="VDE: confident road where the standardized max logit >= this.")] = None,
    oodmc_model: Annotated[Path | None, typer.Option(
        "--oodmc-model", help="Fitted OODMC model file (from fit-oodmc).")] = None,
    components: Annotated[Track, typer.Option(
        "--components", help="SegmentMeIfYouCan component metrics with that track's size filters.")] = "none",
    region: Annotated[Region | None, typer.Option(
        "--region", help="road: only where the roi is 1. Default: all for --logits, the preset's region for "
        "--scores.")] = None,
    bins: Annotated[int | None, typer.Option(
        "--bins", help="Quantile-binned metrics with this many bins (default: exact).")] = None,
    max_overlays: Annotated[int, typer.Option("--max-overlays", help="Heat-map overlays for this many frames.")] = 4,
    threshold_from: Annotated[Path | None, typer.Option(
        "--threshold-from", help="thresholds.json of a validation run: its thresholds draw the masks and give "
        "F1/precision/recall/FPR at a fixed threshold.")] = None,
    threshold_kind: Annotated[ThresholdKind, typer.Option(
        "--threshold-kind", help="Which threshold of --threshold-from: F1-optimal or TPR 95%.")] = "f1",
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu, cuda or cuda:N for the scores (default: cpu).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    workers: Annotated[int, typer.Option(
        "--workers", help="Score frames in this many processes (results identical to 1).")] = 1,
    protocol: Annotated[ProtocolChoice, typer.Option(
        "--protocol", help="exact: ours | smiyc, fishyscapes: metrics as that benchmark's own code computes them "
        "(docs/protocols.md) | all: every protocol side by side in protocols.md/.csv (metrics.json stays exact).")
    ] = "exact",
    component_rule: Annotated[ComponentRule | None, typer.Option(
        "--component-rule", help="Component masks: gt (score > t) | ge (score >= t). Default: the protocol's "
        "(exact: ge, smiyc: gt).")] = None,
    sml_border: Annotated[SmlBorder | None, typer.Option(
        "--sml-border", help="SML / VDE boundary mask: geodesic (ours, default) | official-2021 (the official "
        "code with its pinned kornia).")] = None,
    boundary_width: Annotated[int | None, typer.Option(
        "--boundary-width", help="SML / VDE: the official boundary_width radius schedule (with --boundary-iters).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(
        "--temperature", help="T of energy and msp-t (default: their own, 1 and 1000).")] = None,
    save_scores: Annotated[list[str] | None, typer.Option(
        "--save-scores", metavar="LAYOUT:DIR", help="Also write every method's maps, repeatable: "
        "smiyc:DIR (DIR/anomaly_p/<method>/<dataset>/<frame>.hdf5, float16) | fishyscapes:DIR "
        "(DIR/<method>/<frame>_anomaly.npy + _segmentation.npy) | npy:DIR (DIR/<method>/<frame>.npy); "
        "docs/formats.md §4.")] = None,
    meta: Annotated[str | None, typer.Option(
        "--meta", metavar="[METHOD=]DIR", help="A meta-classify --out folder of the same frames: its numbers go "
        "into METHOD's row of metrics.json/csv (default: entropy) as meta_auroc, meta_fp_before, meta_fp_left, "
        "meta_fn_after, ...")] = None,
) -> None:
    """Score frames and write metrics (exact by default; --protocol smiyc|fishyscapes|all: as the benchmarks'
    own code computes them), ROC/PR plots and heat-map overlays."""
    with user_errors():
        from .report import evaluate_logits, evaluate_score_maps

        options = EvalOptions(
            bins=bins, components=components, component_rule=component_rule, protocol=protocol, region=region,
            threshold_from=threshold_from, threshold_kind=threshold_kind, max_overlays=max_overlays,
            save_scores=tuple(save_scores or ()), workers=workers, progress=progress, sml_stats=sml_stats,
            oodmc_model=oodmc_model, boundary_iters=boundary_iters, smoothing=smoothing,
            vde_threshold=vde_threshold, sml_border=sml_border, boundary_width=boundary_width,
            temperature=temperature, device=device, resize_scores=resize_scores, meta=meta).validate()
        _check_inputs(logits=logits, scores=scores, dataset=dataset, method=method)
        if scores is not None:
            assert dataset is not None     # _check_inputs
            res = evaluate_score_maps(scores, dataset, out, options, name=name)
            if res.extra_names:
                _echo(f"note: {len(res.extra_names)} score map(s) have no ground-truth frame and were not used: "
                      + ", ".join(res.extra_names[:5]) + (" ..." if len(res.extra_names) > 5 else ""))
        else:
            assert logits is not None      # _check_inputs
            res = evaluate_logits(logits, method or [], out, options)
        _print_summary(res)


@app.command("meta-classify")
def meta_classify(
    logits: Annotated[Path, typer.Option("--logits", help="logits.h5 to classify (its labels give the counts).")],
    out: Annotated[Path, typer.Option(
        "--out", help="Report folder (meta.json, frames.csv, segments.csv, overlays/).")],
    entropy_threshold: Annotated[float | None, typer.Option(
        "--entropy-threshold", help="Segments: normalized entropy >= t, t in (0, 1]. Default: 0.7 (meta-ood's), "
        "or the --model's own.")] = None,
    cv: Annotated[str | None, typer.Option(
        "--cv", help="loo: leave-one-out, meta-ood's (default) | K: K folds grouped by frame (faster on large "
        "sets, and honest: a frame's segments never train the model that judges them).")] = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="Apply this fitted classifier (from --save-model) instead of cross-validation; works "
        "without labels.")] = None,
    save_model: Annotated[Path | None, typer.Option(
        "--save-model", help="Write the classifier fitted on every segment here (to apply with --model).")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", help="Frames in this many processes, folds in as many threads (results identical to 1).")] = 1,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    max_overlays: Annotated[int, typer.Option(
        "--max-overlays", help="Overlays of kept / removed segments for this many frames.")] = 4,
) -> None:
    """meta-ood's meta classification: entropy segments, their MetaSeg metrics, a logistic regression that removes
    false-positive segments, and the false-positive / false-negative segment counts before and after."""
    with user_errors():
        from .meta_report import MetaOptions
        from .meta_report import meta_classify as run_meta_classify

        options = MetaOptions(entropy_threshold=entropy_threshold, cv=cv, model=model, save_model=save_model,
                              workers=workers, progress=progress, max_overlays=max_overlays).validate()
        res = run_meta_classify(logits, out, options)
        s = res.summary

        def num(k: str) -> str:
            v = s.get(k)
            return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

        typer.echo(f"{num('segments')} segments, {num('kicked')} removed; false positives {num('fp_before')} -> "
                   f"{num('fp_left')} left (meta-ood's fp_after {num('fp_after')}); false negatives "
                   f"{num('fn_before')} -> {num('fn_after')}")
        typer.echo(f"meta classifier: AUROC {num('meta_auroc')}, AUPRC {num('meta_auprc')}, accuracy "
                   f"{num('meta_accuracy')}")
        typer.echo(f"report: {res.out_dir}")


@app.command("methods")
def methods() -> None:
    """List the score methods: name, what each needs (logits / mc: the MC-dropout block) and its definition."""
    with user_errors():
        from .scores import definitions, scorer_class

        for m, text in definitions().items():
            typer.echo(f"{m:<11} {'[' + scorer_class(m).requires + ']':<9} {text}")


@datasets_app.command("list")
def datasets_list() -> None:
    """Show the presets: label convention and evaluated region (whole image or road)."""
    from cocodag.formats.evalsets import PRESETS

    for p in PRESETS.values():
        typer.echo(f"{p.name:<20} region={p.region:<4} {p.description}")
        typer.echo(f"{'':<20} layout: {p.layout}")


@datasets_app.command("convert")
def datasets_convert(
    preset: Annotated[str, typer.Argument(help="Source preset (see `oodscore datasets list`).")],
    src: Annotated[Path, typer.Argument(help="Source root in the preset's own layout.")],
    dst: Annotated[Path, typer.Argument(help="Output folder (images/, labels/, roi/, meta.json).")],
) -> None:
    """Convert an evaluation set to the documented layout (labels 0 = ID, 1 = anomaly, 255 = void)."""
    with user_errors():
        from cocodag.formats.evalsets import convert

        meta = convert(preset, src, dst)
        px = meta["pixels"]
        typer.echo(f"{dst}: {len(meta['names'])} frames from {preset} (region {meta['region']}); pixels: "
                   f"{px['id']} ID, {px['anomaly']} anomaly, {px['void']} void")


@app.command("compare")
def compare(
    reports: Annotated[list[Path], typer.Argument(help="Report folders of `oodscore evaluate` (with metrics.json).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for leaderboard.md/.csv/.tex (and roc.png, pr.png).")],
    metric: Annotated[str | None, typer.Option(
        "--metric", help="Columns, comma-separated: auroc,ap,fpr95,f1,precision,recall,fpr,threshold,"
        "siou,ppv,mean_f1; with evaluate --meta: meta_auroc,meta_auprc,meta_accuracy and the segment counts "
        "meta_fp_before,meta_fp_left,meta_fp_after,meta_fn_before,meta_fn_after,... (default: the usual ones the "
        "reports have).")] = None,
    names: Annotated[str | None, typer.Option(
        "--names", help="Run names, comma-separated, one per report folder (default: folder names).")] = None,
    published: Annotated[Leaderboard | None, typer.Option(
        "--published", help="Add the methods of this SegmentMeIfYouCan leaderboard (shipped with oodscore) as rows, "
        "marked published, with their requires_ood flag; best is then over all rows.")] = None,
) -> None:
    """One leaderboard over several reports (runs x methods x protocols), best per column marked, as markdown,
    CSV and LaTeX; overlaid ROC/PR curves when the reports hold curve data."""
    with user_errors():
        from .compare import compare_reports

        res = compare_reports(reports, out, metrics=metric, names=names.split(",") if names is not None else None,
                              published=published)
        for note in res["notes"]:
            _echo(f"note: {note}")
        typer.echo(f"{len(res['rows'])} rows x {len(res['metrics'])} metrics: "
                   + ", ".join(str(f) for f in res["files"]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
