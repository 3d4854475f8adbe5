"""fxq: FP8 (E4M3) quantization through torch.export, for TensorRT."""
from . import ops  # noqa: F401  (registers torch.ops.fxq.fp8_qdq)
from . import verify  # noqa: F401
from . import roles
from .capture import capture
from .config import Override, QuantConfig, RoleSpecs, TensorSpec, preset
from .errors import CalibrationError, CaptureError, ConfigError, FxqError, InputError
from .center_keys import center_attention_keys
from .fallback import Fallback
from .quantize import QuantizedModel, quantize
from .record import record_inputs
from .step_error import compare_steps
from .lower import LoweredModel, LowerError, lower
from .sensitivity import sensitivity

__all__ = ["quantize", "sensitivity", "Fallback", "center_attention_keys", "capture", "QuantizedModel", "QuantConfig",
           "RoleSpecs", "TensorSpec", "Override", "preset", "roles",
           "FxqError", "CaptureError", "CalibrationError", "ConfigError", "InputError",
           "lower", "LoweredModel", "LowerError", "record_inputs", "compare_steps"]
__version__ = "0.1.0"
