"""Shared test setup: stage folders on sys.path, the Triton interpreter on CPU, the optional real data.

Stage folders start with digits, so they are not packages; every stage file puts the folders it
imports from on sys.path (README, "How the code is laid out"). Tests do the same once, here.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STAGES = ["01_data", "02_tokenizer", "03_model", "04_pretrain",
          "05_sft_lora", "06_rlhf_dpo", "07_distill_quant", "kernels"]
sys.path[:0] = [str(REPO / s) for s in STAGES]

# Without a GPU, Triton kernels run in its interpreter (numpy on CPU); it must be set before import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path to ../shared/data (real public texts); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture
def repo_root():
    return REPO
