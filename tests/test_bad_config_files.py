"""Bad QuantConfig documents, from a --config file or a dict: a ConfigError naming the field."""
import json

import pytest

import fxq
from cli_runs import cli_error, quantize_argv
from fxq.errors import ConfigError


@pytest.mark.parametrize("content,words", [
    ("[1, 2]", ["must be a JSON object", "got list"]),
    ('{"overrides": [{"roles": {}}]}', ["overrides[0]", "missing 'module'"]),
    ('{"overrides": {"module": "x"}}', ["'overrides' must be a list"]),
    ('{"min_gemm_dim": "16"}', ["'min_gemm_dim' must be a whole number", "str"]),
    ('{"min_gemm_dim": true}', ["'min_gemm_dim' must be a whole number", "bool"]),
    ('{"roles": {"linear.input": {"calibrator": 3}}}', ["roles.linear.input.calibrator", "a string"]),
    ('{"roles": {"linear.input": {"percentil": 99}}}', ["unknown key 'percentil'"]),
    ('{"roles": {"linear.inputs": null}}', ["unknown role 'linear.inputs'", "linear.input"]),
    ("\x00\x01garbage", ["not valid JSON"]),
])
def test_cli_bad_config_file(vit_model, tmp_path, capsys, content, words):
    (tmp_path / "c.json").write_text(content)
    cli_error(capsys, quantize_argv(vit_model, tmp_path, "--calib-synthetic", "2", "--config",
                                    str(tmp_path / "c.json")), "config", *words)


def test_cli_missing_config_file(vit_model, tmp_path, capsys):
    cli_error(capsys, quantize_argv(vit_model, tmp_path, "--calib-synthetic", "2", "--config",
                                    str(tmp_path / "none.json")), "does not exist")


@pytest.mark.parametrize("doc,error,words", [
    ([], ConfigError, "must be a JSON object"),
    ({"overrides": [{"module": "norm"}]}, ConfigError, r"overrides\[0\]' is missing 'roles'"),
    ({"overrides": [{"module": 3, "roles": {}}]}, ConfigError, r"overrides\[0\].module' must be a string"),
    ({"roles": []}, ConfigError, "'roles' must be an object"),
    ({"head_size_min": 1.5}, ConfigError, "'head_size_min' must be a whole number"),
    ({"min_gem_dim": 3}, ConfigError, "unknown config keys"),
    ({"version": "1"}, ConfigError, "'version' must be a whole number"),
])
def test_api_config_from_dict(doc, error, words):
    with pytest.raises(error, match=words):
        fxq.QuantConfig.from_dict(doc)


def test_config_round_trip_still_works():
    cfg = fxq.preset("tensorrt-fp8-percentile")
    assert fxq.QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg

