"""User-facing errors: each one is printed by the CLI as a single clear line, without a traceback."""


class FptquantError(Exception):
    """Base class of every error caused by user input (bad path, bits, model, data, ...)."""


class ModelLoadError(FptquantError):
    """The model reference could not be resolved or loaded."""


class UnsupportedArchitectureError(FptquantError):
    """No adapter is registered for the model's architecture."""


class ConfigError(FptquantError):
    """A recipe, bits spec or option is invalid."""


class DataError(FptquantError):
    """Evaluation or calibration data is missing, empty or too short."""


class OutputExistsError(FptquantError):
    """The output directory exists and is not empty."""


class TrainingError(FptquantError):
    """Calibration or training diverged (NaN/Inf loss or parameters, an ill-conditioned transform)."""
