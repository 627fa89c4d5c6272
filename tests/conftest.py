"""Shared test setup: the Triton interpreter on CPU, the optional real data.

Stage folders start with digits, so they are not packages; every stage file puts the folders it
imports from on sys.path (README, "How the code is laid out"). For tests, pyproject.toml's
`pythonpath` puts every stage folder on the path once.
"""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

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
