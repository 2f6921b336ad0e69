"""Rules of the house that a reader should be able to rely on, checked on the source itself."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "speechvq"
MAX_FUNCTION_LINES = 60


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_longer_than_sixty_lines():
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_only_run_py_knows_hydra():
    for path in modules():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        if path.name != "run.py":
            assert not imported & {"hydra", "omegaconf"}, path


def test_no_module_shadows_the_standard_library():
    import sys

    names = {path.stem for path in modules()} | {path.name for path in PACKAGE.rglob("*") if path.is_dir()}
    assert not names & set(sys.stdlib_module_names), names & set(sys.stdlib_module_names)


def test_file_names_of_a_run_folder_are_spelled_in_run_folder_only():
    spelled = ('"units.jsonl"', '"units_dedup.jsonl"', '"dict.km.txt"', '"errors.tsv"', '"units.meta.json"',
               '"metrics.json"', '"codebook.safetensors"', '".speechvq"', '"units.parquet"')  # fmt: skip
    found = [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in modules()
        if path.name != "run_folder.py"
        for name in spelled
        if name in path.read_text()
    ]
    assert not found, found
