"""The outcome block every stage writes: a headline and a bar that could have failed.

Each stage's `outcome.json` holds, besides its own keys, `"headline"` (one line for the report card)
and `"bar"`, built here so every stage decides "passed" the same way:

    from common.outcome import make_bar
    bar = make_bar("test loss (nats/token)", 0.59, threshold=0.92, direction="lower",
                   baseline=0.92, baseline_name="Kneser-Ney 4-gram", interval=(0.57, 0.61), n=36800)
    bar["passed"]   # True: the whole interval lies below the threshold

A stage with several bars may also write `"bars": [...]`; `"bar"` is the one that decides its verdict.
A stage that is a comparison table with no bar of its own (rl_compare: its rows repeat the methods'
bars) writes `"bar": null` and `"table_only": "<why>"`; report.py shows its verdict as n/a.

Interview question it answers:
- Why must the interval, not the point estimate, clear the threshold? (a point estimate that clears
  it by less than its own noise would fail as often as it passes on a rerun: the bar would measure
  luck; requiring the 95 % interval to clear it makes a pass mean something)
"""

import math

DIRECTIONS = ("lower", "higher")


def make_bar(
    metric: str,
    value: float,
    *,
    threshold: float,
    direction: str,
    baseline=None,
    baseline_name: str = "",
    interval=None,
    n=None,
    note: str = "",
    inclusive: bool = False,
) -> dict:
    """The `bar` dict of an outcome block (SCHEMA.md), with `passed` decided here.

    direction "lower": value passes below threshold; "higher": above it. With an interval (lo, hi)
    the whole interval must lie on the passing side, not only the value. The threshold itself fails
    unless inclusive=True (for bars stated as ">= 0.95" or "<= 1 %"). A value that is None or NaN
    (nothing measured) never passes."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
    if interval is not None:
        lo, hi = (float(x) for x in interval)
        if not lo <= hi:
            raise ValueError(f"interval {interval!r} is not ordered (low, high)")
        interval = [lo, hi]
    if n is not None and (int(n) != n or n < 0):
        raise ValueError(f"n {n!r} is not a count")
    measured = value is not None and not (isinstance(value, float) and math.isnan(value))
    if not measured:
        passed = False
    else:
        worst = value if interval is None else (interval[1] if direction == "lower" else interval[0])
        if inclusive:
            passed = bool(worst <= threshold if direction == "lower" else worst >= threshold)
        else:
            passed = bool(worst < threshold if direction == "lower" else worst > threshold)
    return {
        "metric": metric,
        "value": value,
        "interval": interval,
        "n": None if n is None else int(n),
        "baseline": baseline,
        "baseline_name": baseline_name,
        "threshold": threshold,
        "direction": direction,
        "passed": passed,
        "note": note,
    }
