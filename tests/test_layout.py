"""The repository's shape: unique module names that shadow nothing, imports that only flow forward.

Stage folders are not packages (their names start with digits), so every module is imported by its
bare name from a folder on sys.path. That only works if no two folders hold the same name and no
name hides a standard-library or installed package (a stage's `noise.py` would hide PyPI's `noise`
from every other file on the path). The framework is the package `common/` at the repository root
(`from common.cli import run_cli`); it and kernels/ come before every stage, so neither may import a
stage, and a stage imports only earlier stages, common/ and kernels/.
"""

import ast
import re
import functools
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
    # a folder inside an installed package (onnxruntime.quantization puts onnxruntime/transformers on
    # sys.path once imported) is that library's private hack, not where anyone imports from
    others = [p for p in sys.path if p not in ours and not (Path(p).parent / "__init__.py").is_file()]
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
sys.path[:0] = [str(REPO)]  # pytest puts it there (pyproject.toml); `python tests/test_layout.py` does not
from common.layout import STAGES as REGISTRY, RunLayout  # noqa: E402


def test_the_registry_names_real_scripts_each_reading_only_what_an_earlier_stage_wrote():
    written = set()
    for s in REGISTRY:
        assert (REPO / s.script).is_file(), s.script
        missing = [f for f in s.upstream if f not in written]
        assert not missing, f"{s.name} reads {missing}, which no earlier stage writes"
        written |= {s.folder, *s.writes}
    assert len({s.name for s in REGISTRY}) == len(REGISTRY) == len({s.folder for s in REGISTRY})


def test_a_stage_script_reads_no_run_folder_its_registry_line_does_not_declare():
    """run_all --jobs 2 starts a stage once the writers of its `upstream` folders have finished: a
    folder the script reads without declaring it (rlaif's rm/, quantize's sft/ were) would be read
    while another stage is still writing it, or before it exists, depending on timing."""
    folders = {s.folder for s in REGISTRY} | {w for s in REGISTRY for w in s.writes}
    for s in REGISTRY:
        text = (REPO / s.script).read_text(encoding="utf-8")
        read = set(re.findall(r"(?:layout|RunLayout\([^()]*\))\.([a-z_]+)\b", text)) & folders
        undeclared = read - {*s.upstream, s.folder, *s.writes}
        assert not undeclared, f"{s.script} reads {sorted(undeclared)}: add them to its upstream in STAGES"


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


# ------------------------------------------------------------------- commands are not libraries; no circles
# A command (a stage script of the registry, run_all.py, report.py) is run, never imported for its
# functions: what another file needs lives in a module that is not a command. And no two modules
# import each other, directly or round a loop, at the top or inside a function (a function-local
# import is how a circle hides; `python -X importtime` would not show it).
TOP_COMMANDS = ("run_all.py", "report.py")
# Left for their owners (each is a library inside a command; move it out, then drop the line here).
KNOWN_COMMAND_IMPORTS = set()


def module_files(repo: Path = REPO) -> dict:
    """{module name as imported: file}: bare names for the stage folders and kernels/, common.<name>
    for the framework package, and the two top-level commands."""
    found = {}
    for folder in STAGES:
        for f in sorted((repo / folder).glob("*.py")):
            name = f"common.{f.stem}" if folder == "common" else f.stem
            found.setdefault(name, f)
    for name in TOP_COMMANDS:
        if (repo / name).is_file():
            found[Path(name).stem] = repo / name
    return found


def imports_of(path: Path, ours) -> set:
    """The modules of ours that `path` imports anywhere in it (function-local imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in ours:  # common.cli.run_cli -> common.cli
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(repo: Path = REPO) -> dict:
    """{module: the modules of ours it imports}."""
    files = module_files(repo)
    return {m: imports_of(f, files) - {m} for m, f in files.items()}


def command_modules(repo: Path = REPO) -> set:
    return {Path(s.script).stem for s in REGISTRY} | {Path(n).stem for n in TOP_COMMANDS}


def commands_imported(graph: dict, commands: set) -> set:
    """'<module> imports <command>' for every module that imports a command."""
    return {f"{m} imports {c}" for m, deps in graph.items() for c in sorted(deps & commands)}


def import_circles(graph: dict) -> list:
    """Every set of modules that import each other round a loop (strongly connected, size > 1)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while not part or part[-1] != v:
                part.append(stack.pop())
                on_stack.discard(part[-1])
            if len(part) > 1:
                circles.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


@functools.cache
def repo_graph() -> dict:
    return import_graph(REPO)  # read once for both checks


def test_no_command_is_imported_for_its_functions():
    found = commands_imported(repo_graph(), command_modules())
    new = sorted(found - KNOWN_COMMAND_IMPORTS)
    assert not new, (
        "a command script is never imported for its functions; move what is shared into a module "
        "that is not a command: " + "; ".join(new)
    )


def test_no_import_circles():
    circles = import_circles(repo_graph())
    assert not circles, f"modules that import each other (a circle): {circles}"


def test_the_checks_find_a_command_imported_and_a_circle(tmp_path):
    for folder in STAGES:
        (tmp_path / folder).mkdir()
    (tmp_path / "02_tokenizer" / "bpe.py").write_text("import bpe_cli\n")  # library -> command ...
    (tmp_path / "02_tokenizer" / "bpe_cli.py").write_text(
        "def main():\n    from bpe import X\n"  # ... -> library, inside a function: a hidden circle
        "if __name__ == '__main__':\n    main()\n"
    )
    (tmp_path / "02_tokenizer" / "evals.py").write_text("from common.cli import run_cli\nimport bpe\n")
    (tmp_path / "common" / "cli.py").write_text("from common.files import x\n")
    (tmp_path / "common" / "files.py").write_text("x = 1\n")
    graph = import_graph(tmp_path)
    assert graph["evals"] == {"common.cli", "bpe"} and graph["common.cli"] == {"common.files"}
    assert commands_imported(graph, {"bpe_cli"}) == {"bpe imports bpe_cli"}
    assert import_circles(graph) == [["bpe", "bpe_cli"]]
    (tmp_path / "02_tokenizer" / "bpe.py").write_text("X = 1\n")
    assert (
        import_circles(import_graph(tmp_path)) == []
        and commands_imported(import_graph(tmp_path), {"bpe_cli"}) == set()
    )


# ------------------------------------------------------------------- the shape, printed (python tests/test_layout.py)
def folder_of(module: str, files: dict) -> str:
    f = files[module]
    return f.parent.name if f.parent != REPO else f.name


def folder_import_table(repo: Path = REPO) -> str:
    """A markdown table: row folder imports column folder (number of importing files)."""
    files, graph = module_files(repo), import_graph(repo)
    folders = [*STAGES[:1], "kernels", *STAGES[1:-1], *TOP_COMMANDS]
    counts = {}
    for m, deps in graph.items():
        for d in {folder_of(d, files) for d in deps} - {folder_of(m, files)}:
            counts[folder_of(m, files), d] = counts.get((folder_of(m, files), d), 0) + 1
    lines = ["| imports -> | " + " | ".join(folders) + " |", "|---" * (len(folders) + 1) + "|"]
    for a in folders:
        lines.append(f"| {a} | " + " | ".join(str(counts.get((a, b), "")) for b in folders) + " |")
    return "\n".join(lines)


def tree_with_line_counts(repo: Path = REPO) -> str:
    lines = []
    for folder in [*STAGES, "tests"]:
        files = sorted((repo / folder).glob("*.py"))
        total = sum(len(f.read_text(encoding="utf-8").splitlines()) for f in files)
        lines.append(f"{folder}/  ({len(files)} files, {total} lines)")
        for f in files:
            n = len(f.read_text(encoding="utf-8").splitlines())
            lines.append(f"  {f.name:<28} {n:>5}{'  > 700' if n > 700 else ''}")
    for name in TOP_COMMANDS:
        lines.append(f"{name:<30} {len((repo / name).read_text(encoding='utf-8').splitlines()):>5}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(tree_with_line_counts(), "\n\nfiles of the row folder that import the column folder:\n")
    print(folder_import_table())
