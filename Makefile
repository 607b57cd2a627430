# faultwatch — `make demo` runs the whole pipeline on built-in defaults; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.faultwatch-installed
EXTRAS ?= train,export,tflite,edge,broker,dev
CHECKPOINT ?=
DEVICE_CONFIG ?= firmware_configs/dev-replay.toml
BUNDLE ?=

.PHONY: install system-deps demo test bench lint export-int8 install-agent clean

install: $(STAMP)

# torch is installed first and pinned, so pip takes the CPU wheel instead of a multi-GB CUDA
# build; a venv that already has a torch (e.g. your CUDA build) keeps it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Debian packages the tests use: a real mosquitto broker and PortAudio. Installed as root or with
# passwordless sudo; otherwise `make test` stops here with the one command to run.
SYSTEM_PACKAGES := mosquitto libportaudio2 alsa-utils
system-deps:
	@if [ -x /usr/sbin/mosquitto ] && ldconfig -p | grep -q libportaudio.so.2; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	else echo "the broker and audio tests need $(SYSTEM_PACKAGES); run once: sudo make system-deps" >&2; exit 1; fi

demo: install
	$(BIN)/python -m faultwatch.demo $(if $(SPARKPLUG),--sparkplug)

test: install system-deps
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m bench all

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

export-int8: install
	$(BIN)/faultwatch export --formats onnx,onnx-int8,tflite-int8 \
	  --checkpoint "$(if $(CHECKPOINT),$(CHECKPOINT),$$($(BIN)/python -c 'from train.runs import latest_checkpoint; print(latest_checkpoint())'))"

# BUNDLE defaults to the newest exported bundle archive.
install-agent:
	sudo deploy/install-agent.sh $(DEVICE_CONFIG) "$(if $(BUNDLE),$(BUNDLE),$$(ls -t bundles/*.tar.gz | head -n 1))"

clean:
	rm -rf runs bundles bench/results .pytest_cache .ruff_cache
