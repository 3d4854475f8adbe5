# Two commands on a fresh machine:  `make demo` (quantize the built-in default model)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fxq-installed

.PHONY: demo test bench-accuracy bench-matrix bench-modelopt bench-gpu bench-trt clean

demo: $(STAMP)
	$(VENV)/bin/fxq quantize minilm --out out/minilm_fp8.onnx --report

test: $(STAMP)
	$(PY) -m pytest -q

$(STAMP): pyproject.toml requirements.txt requirements-bench.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-bench.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# Benchmarks (see benchmarks/README.md). Fashion-MNIST comes from Debian: apt-get install dataset-fashion-mnist
bench-accuracy: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt scikit-image==0.26.0
	$(PY) benchmarks/accuracy.py

bench-matrix: $(STAMP)
	$(PY) benchmarks/matrix.py

bench-gpu: $(STAMP)
	$(PY) benchmarks/gpu.py

bench-trt: $(STAMP)
	$(PY) benchmarks/trt_latency.py

clean:
	rm -rf $(VENV) out .pytest_cache
