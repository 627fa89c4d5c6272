"""The repository's shape: unique module names that shadow nothing, imports that only flow forward.

Stage folders are not packages (their names start with digits), so every module is imported by its
bare name from a folder on sys.path. That only works if no two folders hold the same name and no
name hides a standard-library or installed package (a stage's `noise.py` would hide PyPI's `noise`
from every other file on the path).
"""

import ast
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = [
    "01_data",
    "02_tokenizer",
    "03_model",
    "04_pretrain",
    "05_sft_lora",
    "06_rlhf_dpo",
    "07_distill_quant",
    "kernels",
]
# Where each folder sits in the flow: kernels/ comes after 01 (it uses common.py) and before 03.
ORDER = {
    "01_data": 1,
    "02_tokenizer": 2,
    "kernels": 2.5,
    "03_model": 3,
    "04_pretrain": 4,
    "05_sft_lora": 5,
    "06_rlhf_dpo": 6,
    "07_distill_quant": 7,
}


def modules():
    """{module name: [folder, ...]} for every .py file in the stage folders."""
    found = {}
    for stage in STAGES:
        for f in sorted((REPO / stage).glob("*.py")):
            found.setdefault(f.stem, []).append(stage)
    return found


def test_module_names_are_unique_across_stage_folders():
    dupes = {m: s for m, s in modules().items() if len(s) > 1}
    assert not dupes, f"module names used in more than one folder: {dupes}"


def test_no_module_shadows_the_standard_library_or_an_installed_package():
    ours = {str(REPO / s) for s in STAGES} | {str(REPO), str(REPO / "tests"), ""}
    others = [p for p in sys.path if p not in ours]
    installed = set(importlib.metadata.packages_distributions())
    clashes = []
    for name in modules():
        if (
            name in sys.stdlib_module_names
            or name in installed
            or importlib.util.find_spec(name, None)
            and importlib.machinery.PathFinder.find_spec(name, others) is not None
        ):
            clashes.append(name)
    assert not clashes, f"these module names hide another module of the same name: {clashes}"


def imported_names(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_imports_only_flow_forward():
    owner = {m: s[0] for m, s in modules().items()}
    backwards = []
    for stage in STAGES:
        for f in (REPO / stage).glob("*.py"):
            for name in imported_names(f):
                if name in owner and ORDER[owner[name]] > ORDER[stage]:
                    backwards.append(f"{stage}/{f.name} imports {name} from {owner[name]}")
    assert not backwards, "a stage may import only from earlier stages and kernels/: " + "; ".join(backwards)
