"""fxq.center_attention_keys: same float outputs, a K scale no longer set by a constant channel."""
import torch

import fxq
from fxq.accuracy.groups import Evaluator
from sensitive_models import data, two_blocks


def test_centering_keeps_float_outputs_and_fixes_the_offset_key_channel():
    m = two_blocks(sensitive=("a",))  # K channel 0 of block a carries +1e6: softmax ignores it, FP8 does not
    clean = two_blocks(sensitive=())  # the same weights without the offset: the float function of m
    example, calib, evals = data(1, 2)[0], data(2), data(2, seed=2)
    centered, n = fxq.center_attention_keys(m, example, calib)
    assert n == 2
    assert float(m.a.k.bias[0].detach()) > 9e5 and abs(float(centered.a.k.bias[0].detach())) < 10  # a copy moved
    x = data(1, seed=4)[0]
    torch.testing.assert_close(centered(x), clean(x), rtol=1e-4, atol=1e-4)
    plain = fxq.quantize(m, example, calib, progress=False)
    fixed = fxq.quantize(centered, example, calib, progress=False)
    assert plain.amax["a:attn.k"] > 1e5 and fixed.amax["a:attn.k"] < 50
    err_plain = Evaluator(clean, plain.graph_module, evals, None).measure()
    err_fixed = Evaluator(clean, fixed.graph_module, evals, None).measure()
    assert err_fixed < 0.5 * err_plain
