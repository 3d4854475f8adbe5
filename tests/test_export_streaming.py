"""The streamed export: weights written tensor by tensor from the program's own tensors into external data.

The external-data threshold is lowered to 0 bytes so a tiny BERT takes the path a 12B model takes; the
file is checked without loading its weights, then run in onnxruntime against the same model written inline."""
import hashlib

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

import fxq
from fxq.verify import run_onnx
from hf_models import bert_inputs, small_bert
from onnx_post.checker import check_model
from onnx_post.pending import ALIGN, PREFIX, TENSOR_MIN_BYTES, Pending


@pytest.fixture(scope="module")
def bert_qm():
    torch.manual_seed(0)
    return fxq.quantize(small_bert(), bert_inputs(), [bert_inputs(4)], progress=False)


@pytest.fixture(scope="module")
def exports(bert_qm, tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    return {
        "inline": bert_qm.export_onnx(d / "inline.onnx"),
        "streamed": bert_qm.export_onnx(d / "streamed.onnx", external_data_bytes=0),
        "raw": bert_qm.export_onnx(d / "raw.onnx", external_data_bytes=0, post_process=False),
    }


def _tensor_digests(path) -> list[tuple]:
    """(dtype, dims, sha256 of the bytes) of every initializer: names differ between exports, bytes must not."""
    model = onnx.load(str(path))  # tiny: loading the weights here is fine
    return sorted((t.data_type, tuple(t.dims), hashlib.sha256(onnx.numpy_helper.to_array(t).tobytes()).hexdigest())
                  for t in model.graph.initializer)


def test_weights_go_to_external_data_tensor_by_tensor(exports, bert_qm):
    result = exports["streamed"]
    assert result.external_data and not exports["inline"].external_data
    model = onnx.load(str(result.path), load_external_data=False)
    onnx.checker.check_model(str(result.path), full_check=True)  # by path: checks the .data file, loads no weight
    external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    inline = [t for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL]
    # 12 FP8 GEMM weights; FP16: the word and position embeddings, the pooler's weight (a GEMV left float)
    assert len(external) == 15
    assert all(len(t.raw_data) < TENSOR_MIN_BYTES for t in inline)
    spans = []
    for t in external:
        info = {e.key: e.value for e in t.external_data}
        assert info["location"] == "streamed.onnx.data" and not info["location"].startswith(PREFIX)
        offset, length = int(info["offset"]), int(info["length"])
        assert length == np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize * int(np.prod(t.dims))
        assert length < ALIGN or offset % ALIGN == 0  # large tensors page-aligned, for memory-mapping readers
        spans.append((offset, offset + length))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no two tensors share bytes
    data = result.path.with_name("streamed.onnx.data")
    assert spans[-1][1] == data.stat().st_size and result.bytes == result.path.stat().st_size + data.stat().st_size
    fp8 = [t for t in external if t.data_type == TensorProto.FLOAT8E4M3FN]
    assert len(fp8) == bert_qm.placement.count("linear.weight") == 12
    assert result.post_counts["pretranspose_weights"] == 12  # transposed as they were written
    assert result.post_counts["stub_initializers"] == 15 == exports["inline"].post_counts["stub_initializers"]
    assert check_model(result.path).ready


def test_streamed_file_is_the_inline_file_bit_for_bit(exports, bert_qm):
    assert _tensor_digests(exports["streamed"].path) == _tensor_digests(exports["inline"].path)
    x = bert_inputs(3)
    want = run_onnx(exports["inline"].path, x, torch.float16)
    got = run_onnx(exports["streamed"].path, x, torch.float16)
    assert len(want) == len(got) == 2
    assert all(np.array_equal(w, g) for w, g in zip(want, got))


def test_without_post_processing_the_weights_stream_as_exported(exports):
    raw = exports["raw"]
    assert raw.external_data and "pretranspose_weights" not in raw.post_counts
    model = onnx.load(str(raw.path), load_external_data=False)
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert len(transposes) >= 12  # the exporter's W^T, left for TensorRT
    x = bert_inputs(2)
    want, got = run_onnx(exports["inline"].path, x)[0], run_onnx(raw.path, x)[0]
    assert np.array_equal(want, got)


def test_a_write_that_fails_half_way_leaves_the_old_files(bert_qm, tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_text("old model")
    (tmp_path / "m.onnx.data").write_text("old weights")
    loads = []
    real = Pending.load

    def failing(self, t):
        loads.append(t.name)
        if len(loads) == 5:
            raise OSError("disk full")
        return real(self, t)

    monkeypatch.setattr(Pending, "load", failing)
    with pytest.raises(OSError, match="disk full"):
        bert_qm.export_onnx(target, external_data_bytes=0)
    assert len(loads) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert target.read_text() == "old model" and (tmp_path / "m.onnx.data").read_text() == "old weights"


def test_a_source_that_disagrees_with_its_stub_is_refused():
    pending = Pending()
    stub = pending.stub("w", TensorProto.FLOAT16, (4, 8), lambda: np.zeros((4, 4), np.float16))
    assert pending.key(stub).startswith(PREFIX)
    with pytest.raises(ValueError, match="'w' should be 64 bytes, its source gave 32"):
        pending.load(stub)
    with pytest.raises(Exception):  # a stub read by anything else names no file: no bytes are made up
        onnx.numpy_helper.to_array(stub)
