# Two commands do everything on a fresh machine:
#   make demo   - create/refresh .venv, install vitlab, train a small VOLO on Animal-MNIST (replaces runs/demo)
#   make test   - create/refresh .venv with test extras, run the fast test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# torch is pinned: a plain `torch` requirement would pull several GB of CUDA wheels.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow bench clean venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	# animal-mnist only ships the data arrays; its declared TensorFlow dependency is not needed.
	$(PIP) install -q --no-deps animal-mnist==0.4
	$(PIP) install -q -e ".[test,tensorboard]"
	# timm, the peer the tests compare against: without its torchvision dependency (the tests put a stand-in
	# torchvision from ../shared on the path); huggingface_hub is the one import timm needs besides torch.
	$(PIP) install -q huggingface_hub
	$(PIP) install -q --no-deps timm==1.0.31
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitlab train --config configs/demo.yaml --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(VENV)/bin/vitlab bench --model volo_d1 --batch-size 8 --img-size 224

clean:
	rm -rf $(VENV) runs .pytest_cache
