"""The documentation site: `mkdocs build --strict` passes (a broken link, a missing page or a
missing API object fails it), the key reference made at build time holds every key of the schema,
and the built index page renders in a real browser. One build, shared by the tests."""

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from browser import is_blank, screenshot
from conftest import ROOT
from textclf import config

MKDOCS = Path(sys.executable).parent / "mkdocs"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built from this checkout into a temporary folder."""
    if not MKDOCS.is_file():
        pytest.skip(f"mkdocs is not installed beside {sys.executable}; pip install 'textclf[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}{done.stderr[-6000:]}"
    return out


def text_of(page):
    """A built page's text, tags dropped and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8")))


def test_the_site_builds_strict_with_every_page(site):
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.md"))
    assert len(pages) >= 30
    for page in pages:
        assert str(page) in nav, f"docs/{page} is not in mkdocs.yml's nav"
        assert (site / page.with_suffix(".html")).is_file(), page
    assert not (site / "hooks.py").exists(), "the hooks are code, not part of the site"


def test_the_key_reference_holds_every_key(site):
    page = (site / "reference" / "keys.html").read_text(encoding="utf-8")
    keys = config.key_list()
    missing = [name for name, _, _, _ in keys if f'<code id="{name}">{name}</code>' not in page]
    assert not missing, f"keys missing from the built reference: {missing}"
    text = " ".join(text_of(site / "reference" / "keys.html").split())
    for name, _, _, help_text in keys:
        assert " ".join(help_text.split()) in text, name
    assert "<!-- generated" not in page


def test_the_api_pages_are_generated_from_the_source(site):
    assert 'id="textclf.predict.Predictor.from_run"' in (site / "reference" / "predictor.html").read_text()
    assert 'id="textclf.onnx_predict.OnnxPredictor"' in (site / "reference" / "onnx_predict.html").read_text()
    assert 'id="textclf.config.parse_args"' in (site / "reference" / "config.html").read_text()
    stages = (site / "reference" / "stages.html").read_text()
    assert all(f'id="textclf.{name}"' in stages for name in ("data.process", "train.run", "evaluate.run",
                                                              "ensemble.run"))


def test_the_benchmark_results_are_bench_readme(site):
    text = " ".join(text_of(site / "benchmarks" / "results.html").split())
    assert "Machine A: AVX2 only, fp32" in text and "The competition toolkit" in text


def test_the_index_page_renders_in_a_browser(site, tmp_path):
    image = screenshot(site / "index.html", tmp_path / "index.png")
    assert not is_blank(image), "the docs' index page rendered blank"
