"""The report card of one run, rewritten from the files its stages wrote (common/report_card.py).

    python report.py --run runs/tiny          # writes runs/tiny/report.md and runs/tiny/report_*.png
    (run_all.py writes it at the end of every run)

Every number comes from the files the stages wrote into the run folder; a stage whose folder holds no
finished run is reported as "not run". This file decides no verdict: each stage wrote its own bar.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent
# Cross-stage imports (README, "How the code is laid out").
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli
from common.report_card import write_report


@dataclass
class ReportConfig:
    run: str = option("", "run folder runs/<name> to report on (required)")


def main(argv=None):
    cfg, _ = parse_config(ReportConfig, argv, doc=__doc__)
    if not cfg.run:
        raise UserError("pass --run runs/<name>, the run folder to report on")
    path = write_report(cfg.run)
    print(path.read_text(encoding="utf-8").split("\n## ")[0])
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
