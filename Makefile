VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo venv clean

venv:
	@bash scripts/bootstrap.sh $(VENV)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/cml demo --out runs/demo --overwrite

clean:
	rm -rf $(VENV) runs .pytest_cache
