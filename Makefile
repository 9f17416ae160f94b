# Developer entry points. `make test` builds the virtual environment on first use
# and reinstalls only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv install demo test bench clean

venv: $(BIN)/python

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(STAMP)

# the stamp makes a repeated `make install` a no-op until the inputs change
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -c constraints.txt -e ".[test,distributed]"
	$(BIN)/pip install -c constraints.txt --no-deps torchrec==1.8.0
	touch $@

demo: install
	$(BIN)/hqgnn demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	@found=0; \
	for f in benchmarks/*.py; do \
		[ -e "$$f" ] || continue; \
		found=1; echo "== $$f"; \
		$(BIN)/python "$$f" || exit $$?; \
	done; \
	[ $$found = 1 ] || echo "no benchmarks yet (benchmarks/*.py)"

# keeps the virtual environment (slow to rebuild); `rm -rf .venv` removes it
clean:
	rm -rf build dist .pytest_cache .hypothesis src/*.egg-info $(STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
