"""The settings of an evaluation, set and checked in one place: :class:`EvalOptions`.

What ``oodscore evaluate`` does with its inputs (a ``logits.h5`` file and methods, or saved score maps and an
evaluation set) is independent of those inputs: the metrics (exact or binned, a benchmark's protocol, component
metrics), the thresholds, the report (overlays, saved maps), how it runs (workers, progress) and the scorers'
options. :class:`EvalOptions` holds them (field names = the command's options, ``-`` written ``_``) and
:meth:`EvalOptions.validate` checks them before any file is opened, each bad value as one line naming its option.

Every choice is a ``Literal`` alias here and its tuple derived from it: the command line annotates its options with
the aliases (typer lists and enforces the choices), the library checks the same tuples.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cocodag.device import resolve_device

from . import OodscoreError
from .layouts import parse_save_spec
from .meta_summary import parse_meta_spec

__all__ = [
    "COMPONENT_RULES",
    "COMPONENT_RULE_CHOICES",
    "PROTOCOL_NAMES",
    "Protocol",
    "check_protocol",
    "default_component_rule",
    "protocol_with_components",
    "PROTOCOL_CHOICES",
    "REGIONS",
    "SML_BORDERS",
    "THRESHOLD_KINDS",
    "TRACK_CHOICES",
    "ComponentRule",
    "EvalOptions",
    "ProtocolChoice",
    "Region",
    "SmlBorder",
    "ThresholdKind",
    "Track",
]

#: ``--components``: the SegmentMeIfYouCan track whose size filters the component metrics use, or none
Track = Literal["anomaly", "obstacle", "none"]
TRACK_CHOICES: tuple[str, ...] = get_args(Track)
#: ``--region``: every pixel, or only the road (the roi mask)
Region = Literal["all", "road"]
REGIONS: tuple[str, ...] = get_args(Region)
#: the benchmark protocols (:mod:`oodscore.protocols` computes them; docs/protocols.md)
Protocol = Literal["exact", "smiyc", "fishyscapes"]
PROTOCOL_NAMES: tuple[str, ...] = get_args(Protocol)
#: ``--protocol``: one protocol, or ``all`` of them side by side
ProtocolChoice = Literal[Protocol, Literal["all"]]
PROTOCOL_CHOICES: tuple[str, ...] = get_args(ProtocolChoice)
#: protocol -> its component rule ("ge": score >= t, "gt": score > t); fishyscapes has no component metrics
COMPONENT_RULES = {"exact": "ge", "smiyc": "gt"}
#: ``--component-rule``: ``ge`` = ``score >= t`` (ours), ``gt`` = ``score > t`` (SMIYC)
ComponentRule = Literal["ge", "gt"]
COMPONENT_RULE_CHOICES: tuple[str, ...] = get_args(ComponentRule)
#: ``--threshold-kind``: which threshold of a ``thresholds.json`` is used
ThresholdKind = Literal["f1", "tpr95"]
THRESHOLD_KINDS: tuple[str, ...] = get_args(ThresholdKind)
#: ``--sml-border``: the SML / VDE boundary mask (:data:`oodscore.scores.sml.BORDERS`)
SmlBorder = Literal["geodesic", "official-2021"]
SML_BORDERS: tuple[str, ...] = get_args(SmlBorder)


def check_protocol(name: str) -> str:
    """``name`` if it is a protocol, else a one-line OodscoreError listing the valid ones."""
    if name not in PROTOCOL_NAMES:
        raise OodscoreError(f"unknown protocol {name!r}: expected one of {', '.join(sorted(PROTOCOL_NAMES))}")
    return name


def default_component_rule(protocol: str) -> str:
    """The component rule a protocol uses unless told otherwise (``ge`` for exact, ``gt`` for smiyc)."""
    return COMPONENT_RULES[protocol_with_components(protocol)]


def protocol_with_components(protocol: str) -> str:
    """``protocol`` if it defines component metrics; one line otherwise."""
    if check_protocol(protocol) not in COMPONENT_RULES:
        raise OodscoreError(f"protocol {protocol!r} defines no component metrics (its official code computes AUROC, "
                            f"AP and FPR95 only); component metrics exist under {' and '.join(COMPONENT_RULES)}")
    return protocol


def _or(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


@dataclass(frozen=True)
class EvalOptions:
    """Options of ``oodscore evaluate`` besides its inputs (see the CLI help); defaults are the command's.

    Metrics: ``bins`` (None = exact; an int = quantile-binned streaming metrics), ``components`` (component metrics
    with that track's size filters, a second pass), ``component_rule`` (None = the protocol's own: exact ``ge``,
    smiyc ``gt``), ``protocol`` (``docs/protocols.md``; ``all``: every protocol side by side in
    ``protocols.md/.csv``), ``region`` (None = ``all`` for logits, the preset's region for score maps),
    ``threshold_from`` / ``threshold_kind`` (a ``thresholds.json`` of a validation run: its thresholds draw the
    overlay masks and give F1 / precision / recall / FPR at that fixed threshold, ``<metric>@<kind>_given``),
    ``meta`` (``[METHOD=]DIR``: the numbers of that ``oodscore meta-classify`` folder go into METHOD's row,
    ``entropy`` by default, as ``meta_auroc``, ``meta_fp_before``, ...: :mod:`oodscore.meta_summary`).

    Report and run: ``max_overlays`` (heat-map overlays of this many frames), ``save_scores`` (``LAYOUT:DIR``
    specs, :mod:`oodscore.layouts`), ``workers`` (frames scored in this many processes; the numbers and files are
    those of one process, bit for bit), ``progress``.

    Scorers (``--logits`` only; None keeps each scorer's default): ``sml_stats`` (for sml, vde), ``oodmc_model``,
    ``boundary_iters``, ``smoothing``, ``vde_threshold``, ``sml_border``, ``boundary_width``, ``temperature``,
    ``device`` (auto, cpu, cuda or cuda:N; None: the input's, CPU). Score maps only: ``resize_scores``.
    """

    bins: int | None = None
    components: Track = "none"
    component_rule: ComponentRule | None = None
    protocol: ProtocolChoice = "exact"
    region: Region | None = None
    threshold_from: Path | str | None = None
    threshold_kind: ThresholdKind = "f1"
    max_overlays: int = 4
    save_scores: tuple[str, ...] = ()
    workers: int = 1
    progress: bool = True
    sml_stats: Path | str | None = None
    oodmc_model: Path | str | None = None
    boundary_iters: int = 4
    smoothing: bool = True
    vde_threshold: float | None = None
    sml_border: SmlBorder | None = None
    boundary_width: int | None = None
    temperature: float | None = None
    device: str | None = None
    resize_scores: bool = False
    meta: Path | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "save_scores", tuple(self.save_scores or ()))   # a list from the CLI

    def replace(self, **changes) -> EvalOptions:
        """A copy with ``changes`` (field names; an unknown one is a ``TypeError``), not yet validated."""
        return dataclasses.replace(self, **changes) if changes else self

    def validate(self) -> EvalOptions:
        """Check every option and their combinations; returns ``self``.

        Raises
        ------
        OodscoreError
            One line naming the option, what it expects and what it got (or the combination that does not work).
        """
        w = self.workers
        if isinstance(w, bool) or not isinstance(w, int):
            raise OodscoreError(f"--workers {w!r}: expected an integer >= 1")
        if w < 1:
            raise OodscoreError(f"--workers {w}: expected at least 1")
        if self.bins is not None and (isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 2):
            raise OodscoreError(f"--bins {self.bins}: expected at least 2 (or leave it out for exact metrics)")
        if self.max_overlays < 0:
            raise OodscoreError(f"--max-overlays {self.max_overlays}: expected >= 0")
        if self.components not in TRACK_CHOICES:
            raise OodscoreError(f"--components {self.components!r}: expected {_or(TRACK_CHOICES)}")
        if self.region is not None and self.region not in REGIONS:
            raise OodscoreError(f"--region {self.region!r}: expected {_or(REGIONS)}")
        self.protocols()
        if self.threshold_kind not in THRESHOLD_KINDS:
            raise OodscoreError(f"--threshold-kind {self.threshold_kind!r}: expected one of "
                                f"{', '.join(THRESHOLD_KINDS)}")
        if self.sml_border is not None and self.sml_border not in SML_BORDERS:
            raise OodscoreError(f"--sml-border {self.sml_border!r}: expected one of {', '.join(SML_BORDERS)}")
        for spec in self.save_scores:
            parse_save_spec(spec)
        if self.meta is not None:
            parse_meta_spec(self.meta)
        if self.device is not None:
            resolve_device(self.device)          # CUDA asked for on a machine without it: one line, up front
        return self

    def protocols(self) -> list[str]:
        """The protocols this evaluation computes (the first one gives ``metrics.json``); one line for a bad
        ``protocol`` / ``component_rule`` / ``components`` / ``bins`` / ``threshold_from`` combination.

        ``all``: every protocol, exact first; components then under those that define them (exact, smiyc).
        """
        protocol = self.protocol
        if protocol not in PROTOCOL_CHOICES:
            raise OodscoreError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOL_CHOICES)}")
        if self.component_rule is not None:
            if self.component_rule not in COMPONENT_RULE_CHOICES:
                raise OodscoreError(f"--component-rule {self.component_rule!r}: expected gt (score > t) or ge "
                                    "(score >= t)")
            if self.components == "none":
                raise OodscoreError("--component-rule needs --components anomaly|obstacle")
        if protocol == "exact":
            return ["exact"]
        if self.bins is not None:
            raise OodscoreError(f"--bins is a binning of the exact protocol; --protocol {protocol} computes its own "
                                "(leave --bins out)")
        if self.threshold_from is not None:
            raise OodscoreError(f"--threshold-from works with --protocol exact only (the given thresholds are scored "
                                f"with score >= t on exact counts), not with --protocol {protocol}")
        if protocol == "all":
            return ["exact", *(p for p in PROTOCOL_NAMES if p != "exact")]
        if self.components != "none":
            try:
                default_component_rule(protocol)
            except OodscoreError as e:
                raise OodscoreError(f"--components {self.components} --protocol {protocol}: {e}") from None
        return [protocol]

    def check_score_maps(self) -> None:
        """Saved score maps are evaluated as they are: the scorer options that change a map are refused."""
        if self.sml_border is not None or self.boundary_width is not None or self.temperature is not None:
            raise OodscoreError("--sml-border, --boundary-width and --temperature are scorer options for "
                                "--logits; --scores evaluates the given maps as they are")
