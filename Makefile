# Two commands: `make demo` and `make test`. Both create .venv with plain pip when needed.
# torch/torchvision are pinned in pyproject.toml (2.14.1 / 0.29.1): pip takes them from this
# machine's local disk; other versions download gigabytes or fail to import beside torchvision.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup test test-fast demo clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	# Two wheels install the same cv2 folder (see pyproject.toml): whichever pip put last would win.
	# Put the headless one last, always; --no-deps keeps everything else as resolved.
	$(VENV)/bin/pip install --quiet --force-reinstall --no-deps \
		opencv-python-headless==$$($(VENV)/bin/python -c 'import importlib.metadata as m; print(m.version("opencv-python-headless"))')
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(VENV)/bin/python -m pytest -q -rs

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

demo: setup
	$(VENV)/bin/masactrl-animate demo

clean:
	rm -rf out .pytest_cache
