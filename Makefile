# Two commands: `make demo` and `make test`. Both create .venv with plain pip when needed.
# torch/torchvision are pinned in pyproject.toml (2.14.1 / 0.29.1): pip takes them from this
# machine's local disk; other versions download gigabytes or fail to import beside torchvision.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup system-deps test test-fast demo clean

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

# PostgreSQL for tests/test_distributed_postgres.py (the several-machine path of deploy/) and Chromium
# for tests/test_ui_browser.py. CI runs as root on a clean Debian: install them once; elsewhere (not
# root, no apt) those tests skip and say why.
system-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	else echo "PostgreSQL not installed and cannot install it here: the PostgreSQL end-to-end test will skip"; fi
	@# Chromium and its driver for tests/test_ui_browser.py (the animation in the Prefect UI).
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver >/dev/null; \
	else echo "Chromium/chromedriver not installed and cannot install them here: the browser test will skip"; fi

test: setup system-deps
	$(VENV)/bin/python -m pytest -q -rs

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

demo: setup
	$(VENV)/bin/masactrl-animate demo

clean:
	rm -rf out .pytest_cache
