# Two commands set everything up on a fresh machine: `make serve` and `make test`.
# Each creates .venv and installs what it needs; nothing relies on a previous session.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# HOST=/PORT= on the command line win; unset, the config's host and port (127.0.0.1:8000)
# apply, and LINESIDE_HOST / LINESIDE_PORT over them, as the config says
HOST ?=
PORT ?=
LISTEN = $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

.PHONY: serve line-demo test test-long lint test-only fuzz soak bench-native clean system-deps

# Python 3.11 or later, checked before .venv is made: a venv of an older Python (or one whose
# creation failed half-way, e.g. without Debian's python3-venv) was kept, and every later
# run, even with PYTHON=python3.11, failed on it with pip's "requires a different Python"
$(PY):
# (exit 3: too old; another failure is the interpreter's own, its message shown, not
# called a version it is not)
	@$(PYTHON) -c 'import sys; sys.exit(3 if sys.version_info < (3, 11) else 0)'; s=$$?; \
	if [ $$s -ne 0 ]; then v=$$($(PYTHON) -V 2>/dev/null); \
	  if [ $$s -eq 3 ]; then echo "Lineside needs Python 3.11 or later; $(PYTHON) is $$v:" >&2; \
	  else echo "$(PYTHON) $${v:+($$v) }could not run (exit $$s; its message above):" >&2; fi; \
	  echo "name another, e.g. make $(or $(MAKECMDGOALS),serve) PYTHON=python3.11" >&2; exit 1; fi
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(PY) -m pip install -q --upgrade pip

# Edge install only: no torch (as on a line-side box).
$(VENV)/.edge: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[train,dev,line,hub]'
	touch $@ $(VENV)/.edge

serve: $(VENV)/.edge
	$(VENV)/bin/lineside serve --config configs/serve.yaml $(LISTEN)

# The edge install plus the line extra (OPC UA, Modbus TCP, MQTT): `make line-demo`.
$(VENV)/.line: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[line]'
	touch $@ $(VENV)/.edge

# `make serve` plus the PLC handshake (OPC UA :4840, Modbus TCP :5020) and line events
# (docs/line-integration.md)
line-demo: $(VENV)/.line
	$(VENV)/bin/lineside serve --config configs/line-demo.yaml $(LISTEN)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# System packages the tests use for real peers: Debian's chromium (review page),
# postgresql (the store on PostgreSQL), GStreamer's RTSP server (camera streams) and
# mosquitto (the MQTT broker line events go to; mosquitto-clients for mosquitto_sub).
# Installed when missing and we are root.
system-deps:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -x /usr/sbin/mosquitto || missing="$$missing mosquitto"; \
	command -v mosquitto_sub >/dev/null || missing="$$missing mosquitto-clients"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" 2>/dev/null || \
	  missing="$$missing python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "not root: tests needing$$missing will be skipped"; fi; fi

# two workers (pytest-xdist), a test file per worker at a time: about half the suite waits
# on servers, subprocesses and sockets, so two files at once fill the 2 cores (13 -> ~10
# minutes). pytest FILE alone runs in one process
test-only: $(VENV)/.dev system-deps
	$(PY) -m pytest -n 2 --dist loadfile

test: lint test-only

# what make test leaves out to stay near 10 minutes on 2 cores (pytest -m long)
test-long: $(VENV)/.dev system-deps
	$(PY) -m pytest -m long

# Longer fuzzing than make test runs: schemathesis on every route of the edge server and
# of the fleet hub as each role, and the decoder and request-body property tests, with
# FUZZ_EXAMPLES examples per operation (decoder: 40x that). Takes about an hour at 500
# on 2 cores (the hub's part about 6 minutes); no per-test timeout.
FUZZ_EXAMPLES ?= 500
fuzz: $(VENV)/.dev
	LINESIDE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest --timeout=0 --hypothesis-show-statistics \
	  tests/lineside_inspect/test_fuzz_api.py tests/lineside_inspect/test_fuzz_hub.py \
	  tests/lineside_inspect/test_fuzz_decode.py

# A box left running: one lineside serve under steady load, hot swaps and camera drops,
# sampling RSS, fds, threads and the store's files every 10 s (tools/soak.py; not in make
# test). SOAK_SECONDS=900 takes 15 minutes and most of one core.
SOAK_SECONDS ?= 900
soak: $(VENV)/.dev system-deps
	PYTHONPATH=inspect:training $(PY) tools/soak.py --seconds $(SOAK_SECONDS)

# Native-scale training beside the whole-frame recipe (docs/benchmarks.md, session 45):
# 1280 px mosaics of the DeepPCB sample's boards, both trained NATIVE_TIME side by side
# (one thread each), exported and judged on the val mosaics; prints both side by side.
# Not in make test: about NATIVE_TIME plus 3 minutes on 2 cores (tools/bench_native.py).
NATIVE_TIME ?= 4m
bench-native: $(VENV)/.dev
	PYTHONPATH=inspect:training $(PY) tools/bench_native.py --time $(NATIVE_TIME)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
