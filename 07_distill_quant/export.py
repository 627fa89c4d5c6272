"""Export a trained GPT as Hugging Face files, or import such a folder as a 03 checkpoint (the
conversions, the safetensors format and the interview questions are in hf_format.py).

    python 07_distill_quant/export.py --ckpt runs/tiny/pretrain/ckpt.pt --out runs/tiny/hf
    python 07_distill_quant/export.py --import-hf runs/tiny/hf --out runs/tiny/imported/ckpt.pt
    python 07_distill_quant/export.py --import-hf ~/gpt2 --out runs/gpt2/imported/ckpt.pt   # real GPT-2

`python 07_distill_quant/export_roundtrip.py --run runs/tiny` (the optional `export` stage) exports the
run's model, loads it back with transformers and onnxruntime, and measures the round trip.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli

from hf_format import export_hf, import_hf


@dataclass
class ExportConfig:
    ckpt: str = option("", "03/04 checkpoint to export (e.g. runs/tiny/pretrain/ckpt.pt)")
    out: str = option("", "folder for the Hugging Face files (or the .pt file with --import-hf)")
    import_hf: str = option("", "the other way: a Hugging Face folder to turn into a 03 checkpoint")


def main(argv=None):
    cfg, _ = parse_config(ExportConfig, argv, doc=__doc__)
    if not cfg.out or bool(cfg.ckpt) == bool(cfg.import_hf):
        raise UserError("give --out and exactly one of --ckpt (export) or --import-hf (import)")
    if cfg.import_hf:
        _, gcfg = import_hf(cfg.import_hf, cfg.out)
        print(f"imported {cfg.import_hf} ({gcfg.n_layer} layers, d={gcfg.n_embd}) -> {cfg.out}")
    else:
        info = export_hf(cfg.ckpt, cfg.out)
        print(f"wrote {info['out']}: {info['architecture']}, {info['tensors']} tensors"
              f"{', tokenizer.json' if info['tokenizer'] else ' (no tokenizer: bytes)'}")  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
