# edgebin: `make setup` installs everything (idempotent), `make demo` runs the main job, `make test` the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgebin-installed
# Debian packages: datasets, emulators and cross toolchains (see README "What setup installs").
# openssh-client deploys to boards (edgebin deploy); openssh-server is for the tests' loopback sshd only.
DEB_PACKAGES := gcc g++ make dataset-fashion-mnist qemu-system-arm qemu-user gcc-arm-none-eabi picolibc-arm-none-eabi \
                gcc-aarch64-linux-gnu g++-aarch64-linux-gnu gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf \
                openssh-client openssh-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_OUT ?= out/demo

.PHONY: setup setup-debian setup-python plugin pi-runtime demo demo-m4 demo-host demo-pi test lint clean

setup: setup-debian setup-python plugin pi-runtime

setup-debian:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

setup-python: $(STAMP)

# The QEMU instruction-count plugin (Debian's QEMU ships none), built into $EDGEBIN_CACHE or ~/.cache/edgebin.
plugin: setup-debian setup-python
	$(PY) -m edgebin.runners.plugin

# The TVM runtime for 64-bit Raspberry Pi bundles: libtvm_runtime.so and libtvm_ffi.so from TVM's aarch64 wheels
# (the versions installed in the venv), cached in $EDGEBIN_CACHE or ~/.cache/edgebin; never committed.
pi-runtime: setup-python
	$(PY) -m edgebin.runtime_wheels

# torch goes first so that nothing later resolves `torch` to the multi-GB CUDA build.
$(STAMP): pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps xgboost==3.2.0  # MetaSchedule's cost model (--tune); its deps pull CUDA NCCL
	touch $@

# The main job: INT8 for a Cortex-M4 board (the default target), run on QEMU (instructions, flash and RAM
# instead of milliseconds).
demo: setup
	$(VENV)/bin/edgebin compress models/resnet8_fashion.pt --target cortex-m4 --method int8 \
	    --data fashion-mnist -o $(DEMO_OUT)

demo-m4: demo

# The same job for this machine (x86): latency in milliseconds against onnxruntime and TVM FP32.
demo-host: setup
	$(VENV)/bin/edgebin compress models/resnet8_fashion.pt --target x86 --method int8 \
	    --data fashion-mnist -o out/demo-host

# The same job for a Raspberry Pi 4 (64-bit Pi OS), run under qemu-aarch64 (instructions, never milliseconds);
# then `edgebin deploy out/demo-pi --to ssh://pi@raspberrypi.local` runs it on the board.
demo-pi: setup
	$(VENV)/bin/edgebin compress models/resnet8_fashion.pt --target rpi4 --method int8 \
	    --data fashion-mnist -o out/demo-pi

test: setup
	$(VENV)/bin/ruff check edgebin tests tools
	$(PY) -m pytest -q tests

lint: setup-python
	$(VENV)/bin/ruff check edgebin tests tools

clean:
	rm -rf out build .pytest_cache
