# The two commands that matter: `make run` and `make test`. Everything they need installs here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

.PHONY: run test lint bench bench-index bench-scale bench-accuracy bench-http bench-api clean

$(STAMP): pyproject.toml setup.py registry/index/_mih.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# Browser tests drive Debian's Chromium (Playwright's own browser downloads fail here);
	@# installed only as root, otherwise those tests skip with the reason.
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-nanum)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/takedown db upgrade
	exec $(BIN)/takedown serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check registry cli tests bench
	$(BIN)/mypy

bench: bench-index

bench-index: $(STAMP)
	$(BIN)/python bench/index.py

bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

bench-accuracy: $(STAMP)
	$(BIN)/python bench/accuracy.py

bench-http: $(STAMP)
	$(BIN)/python bench/http.py

bench-api: $(STAMP)
	$(BIN)/python bench/api_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
