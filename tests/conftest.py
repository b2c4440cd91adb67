"""Shared fixtures: tiny random models in a temporary premodels/, and a way to run the real
stage scripts in-process (the same `main` + `run_cli` path the command line takes)."""

import contextlib
import importlib.util
import io
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # read at import time by transformers: set it first
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one test worker a core (make test): one thread each, or the workers' thread pools fight over the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textclf.errors import run_cli  # noqa: E402
from textclf.premodels import FAMILIES, build_random  # noqa: E402


@pytest.fixture(scope="session")
def premodels(tmp_path_factory):
    """A premodels folder with a tiny random model of each family, built on first use."""
    root = tmp_path_factory.mktemp("premodels")

    class Models:
        dir = root

        def __call__(self, family="bert"):
            path = root / f"random-{family}"
            if not path.exists():
                build_random(family, dest=str(root), seed=0)
            return path

    return Models()


@pytest.fixture(scope="session")
def families():
    return FAMILIES


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_stage_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"Result(code={self.code}, err={self.err[-2000:]!r})"


def _reset_accelerate():
    """Accelerate keeps process-wide singletons; a real run has one per process, tests run many."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_stage(name, *args):
    """Run `<name>.py args...` in this process; return its exit code, stdout and stderr."""
    module = _load_script(name)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(module.main, [str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            _reset_accelerate()
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def stage():
    return run_stage


def write(path, text, encoding="utf-8"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding=encoding)
    return path
