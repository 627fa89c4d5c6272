"""The pretraining command: `train(cfg)` of pretrain_loop.py (the loop, its checkpoints and outcome) from flags.

    python 04_pretrain/pretrain.py --data runs/tiny                    # tiny preset, CPU, ~3 minutes
    python 04_pretrain/pretrain.py --data runs/tiny --resume           # continue from ckpt.pt exactly
    torchrun --nproc_per_node=2 04_pretrain/pretrain.py --data runs/tiny --parallel fsdp
    python 04_pretrain/pretrain.py --data runs/web --preset gpt2       # GPT-2 124M, for a GPU

What it writes and how the loop works: pretrain_loop.py's docstring (shown by --help).
"""

import os
import sys
from pathlib import Path

import torch.distributed as dist

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import command_line, parse_config, run_cli

import pretrain_loop
from pretrain_config import PRESETS, TrainConfig, check_train_config
from pretrain_loop import train


def main(argv=None):
    cfg, _ = parse_config(
        TrainConfig, argv, doc=pretrain_loop.__doc__, presets=PRESETS, default_preset="tiny"
    )
    check_train_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    try:
        train(cfg, command=command_line(__file__, argv))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
