"""mkdocs hooks: pages filled at build time from the checkout itself.

- reference/keys.md: the key reference, from the schema in textclf/config.py (the same
  `key_list()` that `--help` and `python -m textclf.config` print), so a key added, removed or
  redescribed there is in the next build without a page being edited;
- benchmarks/results.md: bench/README.md, where the measured figures are kept.

A page asks for a part with a marker line: `<!-- generated: keys -->` or `<!-- generated: bench -->`.
"""

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS, BENCH = "<!-- generated: keys -->", "<!-- generated: bench -->"


def on_config(config):
    # the checkout's textclf, not an installed copy
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return config


def schema():
    """textclf.config as it is on the disk now (mkdocs serve rebuilds in one process)."""
    module = importlib.import_module("textclf.config")
    return importlib.reload(module)


def keys_page():
    """One table per section: key, type = default, what it does (textclf.config.keys_markdown)."""
    return schema().keys_markdown()


def bench_page():
    """bench/README.md under this page's own title, its headings one level down."""
    text = (ROOT / "bench" / "README.md").read_text(encoding="utf-8")
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("# "):
            continue  # the page has its own title
        out.append(line)
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    if KEYS in markdown:
        markdown = markdown.replace(KEYS, keys_page())
    if BENCH in markdown:
        markdown = markdown.replace(BENCH, bench_page())
    return markdown


def on_serve(server, config, builder):
    # mkdocs serve: rebuild when the schema or the figures change
    server.watch(str(ROOT / "textclf" / "config.py"))
    server.watch(str(ROOT / "bench" / "README.md"))
    return server
