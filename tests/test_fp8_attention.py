"""FP8 attention: the torch reference against the ONNX graph in onnxruntime (CPU), the wrapper's fallbacks and
errors (CPU), and the Triton kernel against the reference on a Hopper GPU (skipped elsewhere)."""
import warnings

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from fxq.errors import InputError
from fxq.kernels import fp8_attention, fp8_attention_reference, kernel_unsupported_reason
from fxq.kernels.fp8_attention import quantize_values
from fxq.kernels.fp8_attention_reference import (P_SCALE, probs_step_envelope, quantize_e4m3,
                                                 reference_from_codes)

SCALES = (1.2 / 448, 6.0 / 448, 4.5 / 448)  # q, k, v: amax / 448 (about 4.7 std)


def _qkv(shape, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g) * a for a in (0.25, 1.3, 1.0))  # scores of std ~2-4
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def _padding_mask(b, s, keep, device="cpu"):
    """BERT-style additive padding mask (b, 1, 1, s): batch row i keeps its first keep[i] keys."""
    m = torch.zeros(b, 1, 1, s, device=device)
    for i, n in enumerate(keep):
        m[i, ..., n:] = float("-inf")
    return m


def _qdq(name, scale_name, out):
    return [helper.make_node("QuantizeLinear", [name, scale_name, "zp"], [out + "_q"]),
            helper.make_node("DequantizeLinear", [out + "_q", scale_name, "zp"], [out])]


def _onnx_attention(shape, p_scale=P_SCALE):
    """The graph fxq exports for one attention block: Q/DQ (FLOAT8E4M3FN) on q, k, v and the softmax output."""
    b, h, t, d = shape
    inits = [helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0.0])]
    for name, s in zip(("sq", "sk", "sv"), SCALES):
        inits.append(helper.make_tensor(name, TensorProto.FLOAT, [], [s]))
    inits.append(helper.make_tensor("sp", TensorProto.FLOAT, [], [p_scale]))
    nodes = _qdq("q", "sq", "qd") + _qdq("k", "sk", "kd") + _qdq("v", "sv", "vd") + [
        helper.make_node("Transpose", ["kd"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["qd", "kt"], ["s"]),
        helper.make_node("Add", ["s", "mask"], ["sm"]),
        helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
        *_qdq("p", "sp", "pd"),
        helper.make_node("MatMul", ["pd", "vd"], ["o"])]
    io = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    graph = helper.make_graph(nodes, "fp8_attention", [io("q", shape), io("k", shape), io("v", shape),
                                                        io("mask", [b, 1, t, t])], [io("o", shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10  # the lowest for opset 21: older onnxruntime builds refuse newer IR versions
    onnx.checker.check_model(model)
    options = ort.SessionOptions()  # no fusions: older builds fuse Q/DQ + MatMul into integer-only kernels
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_the_onnx_graph_in_onnxruntime(causal):
    shape = (2, 3, 40, 16)
    q, k, v = _qkv(shape)
    mask = _padding_mask(2, 40, [40, 29])
    graph_mask = mask.expand(2, 1, 40, 40)
    if causal:  # the graph spells causality as an additive mask
        graph_mask = graph_mask.masked_fill(torch.ones(40, 40, dtype=torch.bool).triu(1), float("-inf"))
    feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "mask": graph_mask.contiguous().numpy()}
    ort_out = torch.from_numpy(_onnx_attention(shape).run(None, feeds)[0])

    ref = fp8_attention_reference(q, k, v, *SCALES, mask=mask, is_causal=causal)
    assert (ref - ort_out).abs().max() < 1e-5

    # Each of the four quantizations is visible: leave one out and the result moves by far more.
    no_p = fp8_attention_reference(q, k, v, *SCALES, mask=mask, is_causal=causal, p_scale=None)
    assert (no_p - ort_out).abs().max() > 1e-3
    for i in range(3):
        scales = list(SCALES)
        scales[i] = 1e-6  # a scale so fine that E4M3 saturates everything at +-448 * 1e-6
        off = fp8_attention_reference(q, k, v, *scales, mask=mask, is_causal=causal)
        assert (off - ort_out).abs().max() > 1e-2


def test_reference_quantizes_q_k_v_with_round_to_nearest_even_and_saturation():
    x = torch.tensor([0.0, 1.0625, 1.1875, 500.0, -1000.0, 17.0])  # ties at 1.0625 -> 1.0 and 1.1875 -> 1.25
    codes = quantize_e4m3(x, 1.0).float()
    assert codes.tolist() == [0.0, 1.0, 1.25, 448.0, -448.0, 16.0]


def test_head_dims_outside_the_kernel_fall_back_to_the_reference_and_say_so():
    q, k, v = _qkv((1, 2, 24, 80))
    assert "head dim 80" in kernel_unsupported_reason(q, v, torch.float16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fp8_attention(q.half(), k.half(), v.half(), *SCALES)
    assert any("head dim 80" in str(w.message) for w in caught)
    ref = fp8_attention_reference(q.half(), k.half(), v.half(), *SCALES)
    assert out.dtype == torch.float16 and torch.equal(out, ref)


def test_strided_layouts_are_read_in_place():
    q, k, v = _qkv((2, 30, 3, 16))  # (B, T, H, D), as a projection gives it
    views = [x.transpose(1, 2) for x in (q, k, v)]
    out = fp8_attention(*views, *SCALES)
    ref = fp8_attention_reference(*(x.contiguous() for x in views), *SCALES)
    assert torch.equal(out, ref)


def test_the_custom_op_traces_under_torch_compile():
    q, k, v = _qkv((1, 2, 20, 16))
    mask = _padding_mask(1, 20, [13])
    fn = torch.compile(lambda *a: fp8_attention(*a, *SCALES, mask=mask), backend="aot_eager", fullgraph=True)
    assert torch.equal(fn(q, k, v), fp8_attention_reference(q, k, v, *SCALES, mask=mask))


@pytest.mark.parametrize("tokens", [197, 256, 4250])
def test_value_codes_have_keys_contiguous_and_rows_padded_to_16_bytes(tokens):
    v = torch.randn(1, 2, tokens, 16)
    codes = quantize_values(v, 0.01)
    assert codes.shape == v.shape and codes.stride(-2) == 1 and codes.stride(-1) % 16 == 0
    assert torch.equal(codes.float(), quantize_e4m3(v, 0.01).float())


@pytest.mark.parametrize("bad, match", [
    (dict(q=torch.zeros(2, 8, 16)), r"\(batch, heads, tokens, head_dim\)"),
    (dict(k=torch.zeros(1, 3, 8, 16)), "do not agree"),
    (dict(v=torch.zeros(1, 2, 8, 32)), "head dims differ"),
    (dict(q=torch.zeros(1, 2, 8, 16, dtype=torch.float64)), "float16, bfloat16 or float32"),
    (dict(q_scale=0.0), "q_scale must be a finite positive"),
    (dict(v_scale=float("nan")), "v_scale must be a finite positive"),
    (dict(mask=torch.ones(1, 1, 1, 8, dtype=torch.bool)), "additive float"),
    (dict(mask=torch.zeros(1, 1, 1, 9)), "does not broadcast"),
])
def test_bad_inputs_get_one_clear_error(bad, match):
    args = dict(q=torch.zeros(1, 2, 8, 16), k=torch.zeros(1, 2, 8, 16), v=torch.zeros(1, 2, 8, 16),
                q_scale=0.01, k_scale=0.01, v_scale=0.01, mask=None)
    args.update(bad)
    with pytest.raises(InputError, match=match):
        fp8_attention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("q_scale"), args.pop("k_scale"),
                      args.pop("v_scale"), **args)


# ---------------------------------------------------------------- GPU: the Triton kernel against the reference
def _hopper():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        return False
    return kernel_unsupported_reason(torch.empty(1, 1, 1, 64, device="cuda"), torch.empty(1, 1, 1, 64),
                                     torch.float16) is None


gpu = pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU and Triton")


def _codes(q, k, v):
    return quantize_e4m3(q, SCALES[0]), quantize_e4m3(k, SCALES[1]), quantize_e4m3(v, SCALES[2])


def kernel_error_in_probs_steps(out, q, k, v, mask=None, is_causal=False):
    """max |kernel - reference| over the envelope of one E4M3 step of P (<= 1: within one step), the output's
    1 - cosine to the reference, and the graph's own 1 - cosine from rounding P (reference with vs without)."""
    q8, k8, v8 = _codes(q, k, v)
    ref = reference_from_codes(q8, k8, v8, *SCALES, mask=mask, is_causal=is_causal, out_dtype=torch.float32)
    unrounded = reference_from_codes(q8, k8, v8, *SCALES, mask=mask, is_causal=is_causal, p_scale=None,
                                     out_dtype=torch.float32)
    env = probs_step_envelope(q8, k8, v8, *SCALES, mask=mask, is_causal=is_causal)
    out_rounding = ref.abs() * torch.finfo(out.dtype).eps  # the kernel's last step writes fp16/bf16
    ratio = ((out.float() - ref).abs() - out_rounding).clamp_min(0) / env
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()  # noqa
    return ratio.max().item(), 1 - cos(out.float(), ref), 1 - cos(unrounded, ref)


CASES = [  # (shape, dtype, causal, mask kind)
    ((2, 3, 200, 64), torch.float16, False, None),
    ((1, 4, 333, 128), torch.bfloat16, False, None),
    ((2, 2, 300, 128), torch.float16, True, None),
    ((3, 2, 384, 64), torch.float16, False, "padding"),
    ((2, 2, 190, 64), torch.bfloat16, True, "full"),
    ((1, 3, 1100, 64), torch.bfloat16, True, "padding"),  # long sequences take the 256-row tile
]


def _case_mask(kind, shape, dtype):
    """A GPU case's mask: None, BERT-style padding (lengths t/2, t, 7), or a full random (Tq, Tk) mask."""
    b, _, t, _ = shape
    if kind == "padding":
        return _padding_mask(b, t, [t // 2, t, 7][:b], device="cuda")
    if kind == "full":
        return torch.randn(b, 1, t, t, device="cuda", dtype=dtype)
    return None


@gpu
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("shape, dtype, causal, mask_kind", CASES)
def test_kernel_within_one_fp8_step_of_p(shape, dtype, causal, mask_kind, exact):
    q, k, v = _qkv(shape, seed=sum(shape), dtype=dtype, device="cuda")
    mask = _case_mask(mask_kind, shape, dtype)
    out = fp8_attention(q, k, v, *SCALES, mask=mask, is_causal=causal, exact_probs=exact)
    assert out.dtype == dtype and out.shape == shape and torch.isfinite(out).all()
    steps, miss, p_noise = kernel_error_in_probs_steps(out, q, k, v, mask, causal)
    print(f"{shape} {dtype} causal={causal} mask={mask_kind} exact={exact}: {steps:.3f} steps of P, "
          f"1-cos {miss:.2e} (graph's own P rounding {p_noise:.2e})")
    assert steps <= 1.0
    # One pass rounds P on other grids: an error of the size of the graph's own P rounding, no more.
    # Exact: the same codes as the graph but for ties (fp32 sums in another order).
    assert miss <= (0.1 if exact else 3.0) * p_noise


LAYOUT_CASES = [  # (shape, dtype, causal, mask kind, config): odd lengths, V rows padded or of T bytes
    ((2, 3, 200, 64), torch.float16, False, None, (128, 64, 4, 3)),
    ((1, 4, 333, 128), torch.bfloat16, False, None, (64, 128, 4, 3)),
    ((2, 2, 300, 64), torch.float16, True, None, (256, 64, 8, 3)),
    ((3, 2, 384, 64), torch.float16, False, "padding", (128, 64, 8, 3)),
    ((2, 2, 190, 64), torch.bfloat16, True, "full", (128, 64, 4, 2)),
]


@gpu
@pytest.mark.parametrize("dense_values", [False, True])
@pytest.mark.parametrize("shape, dtype, causal, mask_kind, config", LAYOUT_CASES)
def test_kernel_reads_padded_and_dense_value_rows_alike(shape, dtype, causal, mask_kind, config, dense_values):
    from fxq.kernels import fp8_attention_triton
    q, k, v = _qkv(shape, seed=sum(shape), dtype=dtype, device="cuda")
    b, h, t, d = shape
    mask = _case_mask(mask_kind, shape, dtype)
    q8, k8, _ = _codes(q, k, v)
    v8 = quantize_values(v, SCALES[2])
    if dense_values:  # rows of T bytes: the unaligned layout, byte loads
        v8 = v8.transpose(-1, -2).contiguous().transpose(-1, -2)
    out = torch.empty_like(q)
    fp8_attention_triton.launch(q8, k8, v8, None if mask is None else mask.expand(b, h, t, t), out,
                                qk_scale=SCALES[0] * SCALES[1], v_scale=SCALES[2], p_scale=P_SCALE,
                                is_causal=causal, exact_probs=False, config=config)
    assert torch.isfinite(out).all()
    steps, miss, p_noise = kernel_error_in_probs_steps(out, q, k, v, mask, causal)
    print(f"{shape} {config} dense_values={dense_values}: {steps:.3f} steps of P, 1-cos {miss:.2e}")
    assert steps <= 1.0 and miss <= 3.0 * p_noise


@gpu
def test_kernel_reads_transposed_and_strided_inputs_as_it_reads_contiguous_ones():
    q, k, v = _qkv((2, 257, 4, 128), dtype=torch.float16, device="cuda")  # (B, T, H, D)
    views = [x.transpose(1, 2) for x in (q, k, v)]
    strided = fp8_attention(*views, *SCALES)
    dense = fp8_attention(*(x.contiguous() for x in views), *SCALES)
    assert torch.equal(strided, dense)
    q8, k8, v8 = _codes(*views)  # V codes with head_dim contiguous: a slower layout, the same numbers
    op = torch.ops.fxq.fp8_attention(q8, k8, v8.contiguous(), *SCALES, None, False, 1.0, P_SCALE, False,
                                     torch.float16)
    assert torch.equal(op, dense)


@gpu
def test_kernel_under_torch_compile_and_cuda_graphs():
    q, k, v = _qkv((2, 4, 512, 64), dtype=torch.bfloat16, device="cuda")
    mask = _padding_mask(2, 512, [512, 300], device="cuda")
    codes = _codes(q, k, v)
    op = lambda q8, k8, v8: torch.ops.fxq.fp8_attention(q8, k8, v8, *SCALES, mask, False, 1.0, P_SCALE,  # noqa: E731
                                                         False, torch.bfloat16)
    whole = lambda q, k, v: fp8_attention(q, k, v, *SCALES, mask=mask)  # noqa: E731
    eager_op, compiled_op = op(*codes), torch.compile(op, mode="reduce-overhead", fullgraph=True)
    compiled_whole = torch.compile(whole, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, record, replay
        out_op = compiled_op(*codes).clone()
        out_whole = compiled_whole(q, k, v).clone()
    assert torch.equal(out_op, eager_op)  # the kernel itself replays bit for bit in a CUDA graph
    # Inductor fuses the q/k/v quantization and may round x / s as x * (1 / s): a code can move by one step.
    steps, miss, p_noise = kernel_error_in_probs_steps(out_whole, q, k, v, mask)
    assert steps <= 1.0 and miss <= 3.0 * p_noise
