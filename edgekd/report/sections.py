"""report.md as sections the parts contribute: the renderer knows no scheme, model kind or job.

A part registers a section where it lives (`@register_section(name, order)` on a function
`(rep, kind) -> list of lines`, empty where the report holds nothing for it): the engine's in
report/write.py, the job's in report/job.py, a scheme's in its module under distill/schemes/, and a
model kind's table columns with `register_kind`. `render_markdown` joins the sections by `order`.
A section is registered when its module is imported: importing edgekd.report registers the engine's
and the job's, importing edgekd.distill every scheme's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

SectionFn = Callable[[dict, str], list]


@dataclass(frozen=True)
class Section:
    name: str
    order: float
    render: SectionFn


SECTIONS: dict[str, Section] = {}


def register_section(name: str, order: float):
    """Decorator: `fn(rep, kind) -> list[str]` renders report.md's section `name`, placed by `order`
    (write.py's docstring lists the engine's orders, so a new section can be placed between them)."""
    def deco(fn: SectionFn) -> SectionFn:
        if name in SECTIONS and SECTIONS[name].render is not fn:
            raise ValueError(f"report section {name!r} is registered twice")
        SECTIONS[name] = Section(name, order, fn)
        return fn
    return deco


@dataclass(frozen=True)
class KindView:
    """How the comparison table shows a model kind: its quality column and any further columns."""

    metric: str                          # the report key of the quality column (perplexity, accuracy, chrf)
    extra: tuple = ()                    # (header, report key, digits) of further columns


KINDS: dict[str, KindView] = {}


def register_kind(kind: str, view: KindView) -> None:
    KINDS[kind] = view


def kind_view(kind: str) -> KindView:
    """The kind's view; a kind nobody registered shows accuracy (the classifiers' column)."""
    return KINDS.get(kind) or KINDS.get("classifier") or KindView("accuracy")


STATUS_WORDS = {"incomplete": "INCOMPLETE", "failed": "FAILED", "interrupted": "INTERRUPTED"}


def status_banner(rep: dict) -> list[str]:
    """report.md's first lines for a run that did not finish: nothing half-done may look complete."""
    st = rep.get("status", "complete")
    if st == "complete":
        return []
    why = rep.get("error") or "the job stopped before its last phase; rerun with --resume to finish it"
    return [f"> **{STATUS_WORDS.get(st, st.upper())}**: {why}", ""]


def render_markdown(rep: dict, kind: str = "causal-lm") -> str:
    """report.md: the title, the status banner, then every registered section in order."""
    lines = ["# edgekd run report", ""] + status_banner(rep)
    for section in sorted(SECTIONS.values(), key=lambda s: s.order):
        lines += section.render(rep, kind)
    return "\n".join(lines)


def fmt(v, nd=4):
    """A report number as report.md shows it: `nd` decimals for floats, — for none."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)
