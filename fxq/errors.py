"""fxq's error types: each message names the problem and the fix."""


class FxqError(Exception):
    """Base class for errors fxq raises about user input."""


class CaptureError(FxqError):
    """torch.export could not capture the model."""


class CalibrationError(FxqError):
    """Calibration data was empty, mismatched, or produced non-finite values."""


class ConfigError(FxqError, ValueError):
    """A config refers to modules or roles that do not exist."""


class InputError(FxqError, ValueError):
    """An argument fxq was given cannot work: wrong inputs, device, file, path or option."""
