"""API misuse (issue 15): eval/train on a QuantizedModel, quantizing twice, generators, empty and outlier batches."""
import warnings

import pytest
import torch

import fxq
from fxq.errors import CalibrationError, InputError
from sensitive_models import data, two_blocks
from tiny_models import DIM, SEQ, TinyAttention, inputs_for


@pytest.fixture(scope="module")
def qm():
    return fxq.quantize(TinyAttention().eval(), inputs_for("mul_after"), [inputs_for("mul_after", 4)], progress=False)


def test_eval_returns_the_model_and_train_says_inference_only(qm):
    x = inputs_for("mul_after", 3)
    before = qm(*x)
    assert qm.eval() is qm and qm.training is False
    assert qm.train(False) is qm
    assert torch.equal(qm(*x), before)
    with pytest.raises(RuntimeError, match="inference-only.*fix: train or fine-tune the float model"):
        qm.train()
    assert qm.training is False and torch.equal(qm(*x), before)


def test_quantizing_a_quantized_model_says_already_quantized(qm):
    with pytest.raises(InputError, match=r"already quantized .*fix: pass the float model"):
        fxq.quantize(qm, inputs_for("mul_after"), [inputs_for("mul_after", 4)], progress=False)


class Counted:
    """A generator of batches that counts what was taken from it."""

    def __init__(self, batches):
        self.batches, self.taken = batches, 0

    def __call__(self):
        for b in self.batches:
            self.taken += 1
            yield b


def test_a_generator_is_read_once_with_gptq_and_fallback():
    m = two_blocks(sensitive=("a",))
    calib = Counted(data(2))
    cfg = fxq.QuantConfig(weight_rounding="gptq")
    qm = fxq.quantize(m, data(1, 2)[0], calib(), cfg, fallback=fxq.Fallback(data(2, seed=2), 4e-4), progress=False)
    assert calib.taken == 2 and qm.calibration_batches == 2
    assert qm.fallback_plan.groups == ("a:attention",) and qm.fallback_plan.final <= 4e-4
    # the GPTQ codes of the search are the ones stored: the rebuilt graph is the one measured
    from fxq.accuracy.groups import Evaluator

    direct = fxq.quantize(m, data(1, 2)[0], data(2), fxq.QuantConfig(weight_rounding="gptq", fallback=("a:attention",)),
                          progress=False)
    x = data(1, seed=4)[0]
    assert torch.equal(qm(x), direct(x))
    assert Evaluator(m, qm.graph_module, data(2, seed=2), None).measure() == pytest.approx(qm.fallback_plan.final,
                                                                                           rel=1e-6)


def test_an_exhausted_generator_is_named_as_such():
    gen = (b for b in [inputs_for("mul_after", 4)])
    list(gen)
    with pytest.raises(CalibrationError, match=r"empty \(a generator or iterator yields its batches once"):
        fxq.quantize(TinyAttention().eval(), inputs_for("mul_after"), gen, progress=False)
    with pytest.raises(CalibrationError, match=r"calibration data is empty; fix"):  # a list says only "empty"
        fxq.quantize(TinyAttention().eval(), inputs_for("mul_after"), [], progress=False)


def test_an_empty_tensor_in_calibration_is_refused_with_batch_and_input():
    ok = inputs_for("mul_after", 4)
    with pytest.raises(CalibrationError, match=r"calibration batch 2: positional input 0 is empty \(shape \(0, "):
        fxq.quantize(TinyAttention().eval(), inputs_for("mul_after"), [ok, (torch.zeros(0, SEQ, DIM),)],
                     progress=False)
    batch = {"hidden": torch.randn(2, SEQ, DIM)}
    with pytest.raises(CalibrationError, match=r"calibration batch 1: input 'hidden' is empty"):
        fxq.quantize(Projection().eval(), batch, [{"hidden": torch.zeros(0, SEQ, DIM)}], progress=False)


class Projection(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(DIM, DIM)

    def forward(self, hidden):
        return self.fc(hidden)


def test_one_batch_that_dominates_an_amax_is_named_in_a_warning():
    calib = [{"hidden": torch.randn(4, SEQ, DIM)} for _ in range(3)]
    calib[1]["hidden"][0, 0, 0] = 1e30  # one outlier in batch 2
    with pytest.warns(UserWarning, match=r"calibration batch 2 alone sets the amax of 'fc:linear.input' to 1e\+30, "
                                         r".*x the largest of the other 2 batches"):
        qm = fxq.quantize(Projection().eval(), calib[0], calib, progress=False)
    assert qm.amax["fc:linear.input"] == pytest.approx(1e30)  # a warning, not a refusal: see fxq/calibration/observers.py
    with warnings.catch_warnings():  # ordinary batches: no warning
        warnings.simplefilter("error", UserWarning)
        fxq.quantize(Projection().eval(), calib[0], calib[::2], progress=False)
