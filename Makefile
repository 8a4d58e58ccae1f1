# Two entry points do all of their own set-up on a fresh machine:
#   make demo   installs hiervit and trains the demo model on Fashion-MNIST (the main job)
#   make test   installs hiervit with its test extras and runs the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned to the builds that this machine kind has on disk (pip finds them offline).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml setup.py
	# mmengine/mmdet import pkg_resources, which setuptools 81 removed.
	$(PY) -m pip install -q 'setuptools<81'
	# NATTEN (in the test extra) is the external oracle for the neighborhood op; on CPU it installs as pure Python
	# (flex backend only). Its build imports torch: installed first without build isolation, the extra then finds it.
	$(PY) -m pip install -q --no-build-isolation natten==0.21.7
	$(PY) -m pip install -q -e '.[test,train,det,seg,mm-cpu,export,bench]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m hiervit.train.demo --output output/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

clean:
	rm -rf $(VENV) build *.egg-info
