VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test test-modern demo venv clean

venv:
	@bash scripts/bootstrap.sh $(VENV)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the suite on the newest stack without DGL (torch 2.13, numpy 2, pandas 3: the GPU image's generation)
test-modern:
	@LOCK=requirements-modern.lock bash scripts/bootstrap.sh .venv-modern
	.venv-modern/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/cml demo --out runs/demo --overwrite

clean:
	rm -rf $(VENV) .venv-modern runs .pytest_cache
