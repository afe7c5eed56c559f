# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv and install optisim with the pinned versions of constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/optisim demo -o demo --overwrite

lint: $(STAMP)
	$(BIN)/ruff check .

# pytest exits 5 when it collected no tests: that is a failure here, with a message.
test: lint
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing the run" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/optisim bench psf

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache *.egg-info
