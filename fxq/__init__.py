"""fxq: FP8 (E4M3) quantization through torch.export, for TensorRT."""
from fxq.conversion import ops  # noqa: F401  (registers torch.ops.fxq.fp8_qdq)
from fxq import verify  # noqa: F401
from fxq import roles
from fxq.capture.program import capture
from fxq.config import Override, QuantConfig, RoleSpecs, TensorSpec, preset
from fxq.errors import CalibrationError, CaptureError, ConfigError, FxqError, InputError
from fxq.accuracy.center_keys import center_attention_keys
from fxq.accuracy.fallback import Fallback
from fxq.quantize import QuantizedModel, quantize
from fxq.calibration.record import record_inputs
from fxq.accuracy.steps import compare_steps
from fxq.lower.driver import LoweredModel, LowerError, lower
from fxq.accuracy.sensitivity import sensitivity

__all__ = ["quantize", "sensitivity", "Fallback", "center_attention_keys", "capture", "QuantizedModel", "QuantConfig",
           "RoleSpecs", "TensorSpec", "Override", "preset", "roles",
           "FxqError", "CaptureError", "CalibrationError", "ConfigError", "InputError",
           "lower", "LoweredModel", "LowerError", "record_inputs", "compare_steps"]
__version__ = "0.1.0"
