"""The pieces every report-card section is built from: which stage folders hold a finished run, the
outcome.json a stage wrote, the Section record, and how numbers, intervals and figures are written.

    from common.report_parts import Section, outcome, stage_block, num, ci

Used by common/report_pretraining.py (stages 01-04), common/report_posttraining.py (05-07) and
common/report_card.py, which lays the sections out. A library: nothing here decides a verdict; the
stages wrote their own bars through common/outcome.py.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from common.files import read_json
from common.layout import stage as stage_entry
from common.runs import MANIFEST


# ----------------------------------------------------------------------------------------------------
# Reading a run: only finished stages count


def finished(folder: Path) -> bool:
    """A stage's folder holds a finished run: its manifest is there (written last) and says complete."""
    m = folder / MANIFEST
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text(encoding="utf-8")).get("status", "complete") == "complete"
    except (OSError, json.JSONDecodeError):
        return False


def outcome(run: Path, folder: str, name: str = "outcome.json"):
    """The JSON a stage wrote, or None when the stage has not finished a run there."""
    d = run / folder
    return read_json(d / name) if finished(d) and (d / name).is_file() else None


def stage_block(s, run: Path, folder: str) -> bool:
    """Fill s.headline, s.bar and s.passed from the stage's outcome.json ({"headline", "bar"}, written by
    the stage through common/outcome.py); False when the stage has not finished a run there."""
    o = outcome(run, folder)
    if o is None:
        return False
    s.headline = o.get("headline", "(the stage wrote no headline)")
    bar = o.get("bar")
    s.bar, s.passed = (
        (bar["note"] or bar["metric"], bar["passed"]) if bar else (o.get("table_only", ""), None)
    )
    s.ran = True
    return True


def ci(interval, digits=3) -> str:
    """' [lo, hi]' of a 95 % interval, or nothing when there is none."""
    return f" [{num(interval[0], digits)}, {num(interval[1], digits)}]" if interval else ""


def num(x, digits=3, sign=False) -> str:
    """A number as text; a missing one as '-' and a NaN/inf visibly so (never hidden as a number)."""
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else "inf"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}" if isinstance(x, float) else f"{x:,}"


@dataclass
class Section:
    """What one stage contributes: its headline line, the bar it is held to, the verdict, the body."""

    stage: str
    title: str
    headline: str = "not run"
    bar: str = ""
    passed: bool = None  # None: not run, or the bar does not apply (e.g. no labels on real text)
    body: str = ""
    ran: bool = False  # a finished run was read: passed None then means "n/a" (a table, no bar)


def headline_section(name: str, title: str):
    """A section holding only what the stage wrote in outcome.json (headline, bar): for a stage whose
    tables live in its own outcome and README rather than here."""

    def section(run, figs) -> Section:
        s = Section(name, title)
        stage_block(s, run, stage_entry(name).outcome_folder)
        return s

    return section


def figure(path, alt: str) -> str:
    """A markdown image link relative to report.md (report_*.png beside it, a stage's plot in its folder),
    or nothing when no figure was drawn or the stage wrote none."""
    if path is None:
        return ""
    path = Path(path)
    if not path.is_file():
        return f"({alt}: no plot at {path})"
    return f"![{alt}]({path.name if path.name.startswith('report_') else path.parent.name + '/' + path.name})"


def drawn(figs, name, plot, *args):
    """figs/name after plot(*args, figs/name); None without a figure folder (run_all's progress lines)."""
    if figs is None:
        return None
    plot(*args, figs / name)
    return figs / name


# what reading a hand-edited or damaged file raises: corrupt JSON, a missing key, a wrong type, an empty list


def bar_line(b: dict) -> str:
    """A stage's bar (SCHEMA.md) as one line: metric, value [interval] (n), the side of the threshold it
    must be on, and the baseline behind the threshold."""
    iv = f" [{num(b['interval'][0])}, {num(b['interval'][1])}]" if b.get("interval") else ""
    n = f" (n = {b['n']:,})" if b.get("n") is not None else ""
    side = "<" if b["direction"] == "lower" else ">"
    base = f"; baseline: {b['baseline_name']} {num(b['baseline'])}" if b.get("baseline_name") else ""
    return f"{b['metric']}: {num(b['value'])}{iv}{n}, must be {side} {num(b['threshold'])}{base}"


def verdict(passed) -> str:
    return "-" if passed is None else "PASS" if passed else "FAIL"
