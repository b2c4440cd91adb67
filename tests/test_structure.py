"""The shape of the package, held as tests: the import layering (import-linter, the contract in
.importlinter), short functions with few parameters, no private name imported across modules,
and one schema that --help and the docs' key reference both come from."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from textclf import config

PACKAGE = ROOT / "textclf"
MAX_LINES, MAX_PARAMETERS = 80, 8


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_the_import_contract_holds():
    """lint-imports, with the contract kept in the repo: the layers (scripts -> command line ->
    stages -> run-time pieces -> core -> base; a stage, the prediction code and every trick never
    import a stage) and no import circle."""
    lint = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_the_contract_names_every_module():
    """A new module gets a place in the layers (import-linter would not check one it does not know)."""
    contract = (ROOT / ".importlinter").read_text(encoding="utf-8")
    listed = {word for line in contract.splitlines() if not line.lstrip().startswith(";")
              for word in line.replace("|", " ").replace(":", " ").split()}
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {"hf_remote"}
    assert names <= listed, f"not in .importlinter's layers: {sorted(names - listed)}"


def functions():
    for path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


def parameters(node):
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return [n for n in names if n not in ("self", "cls")]


def test_functions_are_short_and_take_few_parameters():
    too_long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                for path, node in functions() if node.end_lineno - node.lineno + 1 > MAX_LINES]
    too_many = [f"{path}:{node.lineno} {node.name} ({len(parameters(node))} parameters)"
                for path, node in functions() if len(parameters(node)) > MAX_PARAMETERS]
    assert not too_long and not too_many, too_long + too_many


def test_no_private_name_is_imported_across_modules():
    found = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                found += [f"{path.relative_to(ROOT)}: {node.module}.{alias.name}" for alias in node.names
                          if alias.name.startswith("_")]
    assert not found, found


def imported(path):
    """The package modules a module imports (relative imports), by their last name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            names |= {node.module.split(".")[-1]} if node.module else {alias.name for alias in node.names}
    return names


def test_training_lives_in_three_rooms():
    """train.py the stage, loop.py one fold's loop, preflight.py the refusals: only the stage
    imports the other two, and it stays small."""
    lines = len((PACKAGE / "train.py").read_text(encoding="utf-8").splitlines())
    assert lines <= 550, f"textclf/train.py has {lines} lines"
    assert {"loop", "preflight"} <= imported(PACKAGE / "train.py")
    others = [p.name for p in modules() if p.name != "train.py" and {"loop", "preflight"} & imported(p)]
    assert not others, others


# ---------------------------------------------------------------------------- one schema


def test_every_key_has_a_one_line_description():
    keys = config.key_list()
    assert len(keys) > 100
    for name, _, _, text in keys:
        assert text and "\n" not in text and len(text) <= 200, name


def test_help_prints_every_key_with_its_description(stage):
    result = stage("train", "--help")
    assert result.code == 0
    for name, _, _, text in config.key_list():
        assert f"  {name}: " in result.out and f"      {text}\n" in result.out + "\n", name


README_COMMANDS = """```bash
make demo    # set up .venv, then run the whole pipeline on Reuters R8 -> submissions/demo.csv, scored
make test    # set up .venv, then run the test suite
```"""


def test_the_readme_opens_with_the_two_commands():
    """The first thing under the README's title is the two set-up commands, exactly."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    title, rest = readme.split("\n", 1)
    assert title == "# textclf"
    assert rest.lstrip("\n").startswith(README_COMMANDS + "\n"), "README.md must open with the two commands' block"


def test_the_key_list_is_made_from_the_schema_not_copied():
    """The key reference is made from the schema when the docs are built (docs/hooks.py fills
    docs/reference/keys.md; tests/test_docs.py checks every key is in the built page): no page and
    no README holds a copy that could drift from config.py."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- keys" not in readme and "| `train.lr` |" not in readme
    page = (ROOT / "docs" / "reference" / "keys.md").read_text(encoding="utf-8")
    assert "<!-- generated: keys -->" in page and "|---|" not in page
    assert "key_list()" in (ROOT / "docs" / "hooks.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("section, key, fact", [
    ("data", "max_len", "fixed"), ("data", "train_file", "describes_file"), ("train", "max_time", "free_on_resume"),
    ("eval", "batch_size", "free_on_resume"), ("pseudo", "threshold", "free_on_resume")])
def test_facts_about_keys_live_in_the_schema(section, key, fact):
    if fact == "fixed":
        assert key in config.fixed_data_keys() and "name" not in config.fixed_data_keys()
    elif fact == "describes_file":
        assert key in config.file_reading_keys() and "max_len" not in config.file_reading_keys()
    else:
        assert config.free_on_resume(section, key) and not config.free_on_resume("train", "lr")
