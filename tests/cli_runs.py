"""Helpers for the bad-input tests: run the CLI and expect one error line; a tiny quantized model;
calibration documents and files."""
import json

import fxq
from fxq.cli.main import main
from tiny_models import TinyAttention, inputs_for

TINY_VIT = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128, image_size=32,
                patch_size=8)


def cli_error(capsys, argv, *words, code=2, command="quantize"):
    """Run the CLI, expect exit `code` and exactly one stderr line holding every word."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith(f"fxq {command}: error:") and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def quantize_argv(model, tmp_path, *extra):
    return ["quantize", str(model), "--out", str(tmp_path / "out.onnx"), "--quiet", *extra]


def quantize_tiny(model=None, **kw):
    """fxq.quantize of TinyAttention (or `model`) on one batch, unless calib_data/calibration say otherwise."""
    model = model or TinyAttention().eval()
    kw.setdefault("calib_data", [inputs_for("mul_after", 2)])
    return fxq.quantize(model, inputs_for("mul_after"), progress=False, **kw)


def calibration_doc(qm, **amax):
    """qm's calibration as a calibration= dict, with some amax values replaced."""
    return {"version": 1, "batches": 1, "amax": {**qm.amax, **amax}}


def calib_file(tmp_path, amax=None, **doc):
    p = tmp_path / "calib.json"
    p.write_text(json.dumps({"version": 1, "batches": 1, "amax": {"layer.0:linear.input": 1.0} if amax is None
                             else amax, **doc}))
    return p
