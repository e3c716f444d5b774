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
	@# The privacy test traces the native decoders' system calls with strace.
	command -v strace >/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace)
	@# The abuse tests run the documented nginx configuration in front of gunicorn; the package's
	@# own service is not started (the tests start nginx with their own configuration).
	test -x /usr/sbin/nginx || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
	   apt-get install -y -qq --no-install-recommends nginx && \
	   (service nginx stop >/dev/null 2>&1 || true))
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# opencv.js (the submit page's local features, registry/web/static/js/hash/local.js): from the
# npm registry at the version package-lock.json pins, served from our own origin. The page's
# hashing worker is an ES module, where top-level `this` is undefined: the UMD wrapper's one
# `}(this, function () {` is pointed at globalThis instead (checked: exactly one line changes).
OPENCV_JS := registry/web/static/vendor/opencv.js
$(OPENCV_JS): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	mkdir -p $(dir $@)
	sed 's/^}(this, function () {$$/}(globalThis, function () {/' \
	  node_modules/@techstark/opencv-js/dist/opencv.js > $@.tmp
	test "$$(diff node_modules/@techstark/opencv-js/dist/opencv.js $@.tmp | grep -c '^>')" = 1
	mv $@.tmp $@

run: $(STAMP) $(OPENCV_JS)
	$(BIN)/takedown db upgrade
	exec $(BIN)/takedown serve --host $(HOST) --port $(PORT)

test: $(STAMP) $(OPENCV_JS)
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
	$(BIN)/python bench/http_throughput.py

bench-api: $(STAMP)
	$(BIN)/python bench/api_overhead.py

clean:
	rm -rf $(VENV) node_modules registry/web/static/vendor build *.egg-info .pytest_cache .mypy_cache .ruff_cache
