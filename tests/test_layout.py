"""The repository's shape: unique module names that shadow nothing, imports that only flow forward.

Stage folders are not packages (their names start with digits), so every module is imported by its
bare name from a folder on sys.path. That only works if no two folders hold the same name and no
name hides a standard-library or installed package (a stage's `noise.py` would hide PyPI's `noise`
from every other file on the path). The framework is the package `common/` at the repository root
(`from common.cli import run_cli`); it and kernels/ come before every stage, so neither may import a
stage, and a stage imports only earlier stages, common/ and kernels/.
"""

import ast
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = [
    "common",
    "01_data",
    "02_tokenizer",
    "03_model",
    "04_pretrain",
    "05_sft_lora",
    "06_rlhf_dpo",
    "07_distill_quant",
    "kernels",
]
# Where each folder sits in the flow: common/ first, then kernels/ (it uses only common/), then the stages.
ORDER = {
    "common": 0,
    "kernels": 0.5,
    "01_data": 1,
    "02_tokenizer": 2,
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
    # common/'s modules are imported as common.<name>, so only the package name itself can clash
    bare = [m for m, folders in modules().items() if folders != ["common"]] + ["common"]
    for name in bare:
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


def backward_imports(repo: Path = REPO) -> list:
    """'<folder>/<file> imports <module> from <folder>' for every import against the flow."""
    owner = {}
    for stage in STAGES:
        for f in sorted((repo / stage).glob("*.py")):
            owner.setdefault(f.stem, stage)
    owner["common"] = "common"  # the package itself: `from common.cli import ...`
    backwards = []
    for stage in STAGES:
        for f in sorted((repo / stage).glob("*.py")):
            for name in imported_names(f):
                if name in owner and owner[name] != stage and ORDER[owner[name]] > ORDER[stage]:
                    backwards.append(f"{stage}/{f.name} imports {name} from {owner[name]}")
    return backwards


def test_imports_only_flow_forward():
    backwards = backward_imports()
    assert not backwards, (
        "a stage may import only from earlier stages, common/ and kernels/; common/ and kernels/ from no stage: "
        + "; ".join(backwards)
    )


@pytest.mark.parametrize(
    "folder, line",
    [
        ("kernels", "from world import make_world"),  # kernels/ importing 01_data
        ("common", "from world import make_world"),  # the framework importing 01_data
        ("common", "import kernel_x"),  # the framework importing kernels/
        ("02_tokenizer", "from gpt import GPT"),  # a stage importing a later stage
    ],
)
def test_the_layout_check_rejects_a_backward_import(tmp_path, folder, line):
    for stage in STAGES:
        (tmp_path / stage).mkdir()
    (tmp_path / "01_data" / "world.py").write_text("def make_world(): pass\n")
    (tmp_path / "03_model" / "gpt.py").write_text("class GPT: pass\n")
    (tmp_path / "kernels" / "kernel_x.py").write_text("from common.cli import run_cli\n")
    (tmp_path / "02_tokenizer" / "bpe.py").write_text("from world import make_world\nimport kernel_x\n")
    assert backward_imports(tmp_path) == []  # forward imports (and kernels/ using common/) are fine
    (tmp_path / folder / "bad.py").write_text(line + "\n")
    assert len(backward_imports(tmp_path)) == 1


# ------------------------------------------------------------------- the stage registry (common/layout.py)
from common.layout import STAGES as REGISTRY, RunLayout  # noqa: E402


def test_the_registry_names_real_scripts_each_reading_only_what_an_earlier_stage_wrote():
    written = set()
    for s in REGISTRY:
        assert (REPO / s.script).is_file(), s.script
        missing = [f for f in s.upstream if f not in written]
        assert not missing, f"{s.name} reads {missing}, which no earlier stage writes"
        written |= {s.folder, *s.writes}
    assert len({s.name for s in REGISTRY}) == len(REGISTRY) == len({s.folder for s in REGISTRY})


def test_every_stage_has_its_own_micro_preset_so_the_smoke_test_runs_it():
    """run_all --preset micro passes --preset micro to each stage: the stage must define it."""
    lacking = [s.name for s in REGISTRY if "micro" in s.presets and '"micro"' not in _config_source(s)]
    assert not lacking, f"stages without a micro preset in their parse_config presets: {lacking}"


def _config_source(s) -> str:
    """The stage script and the modules of its folder (a preset may live beside the config class)."""
    return "".join(p.read_text(encoding="utf-8") for p in (REPO / s.script).parent.glob("*.py"))


def test_run_layout_paths_and_rerun_commands():
    layout = RunLayout("runs/x")
    assert layout.tokenizer == Path("runs/x/tokenizer") and layout.tasks == Path("runs/x/data/tasks")
    assert layout.made_by("tokenizer") == "python 02_tokenizer/train_tokenizer.py --data runs/x"
    assert layout.made_by("data") == "python 01_data/prepare.py --out runs/x"
    assert layout.made_by("rm") == "python 06_rlhf_dpo/reward_model.py --run runs/x"
