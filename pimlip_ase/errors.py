"""Named exceptions for users. Every message names the structure, key or element involved."""


class PimlipError(Exception):
    """Base class of every error pimlip_ase raises on purpose."""


class ConfigError(PimlipError, ValueError):
    """A training config, recipe or option is malformed (unknown key, bad value)."""


class ResumeDataError(ConfigError):
    """A run cannot resume: its training or validation data differ from its checkpoint's."""


class UnknownElementError(PimlipError, KeyError):
    """A structure contains an element the model was not trained on."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class InvalidStructureError(PimlipError, ValueError):
    """A structure cannot be evaluated (NaN/inf positions, degenerate cell, ...)."""


class MissingLabelError(PimlipError, KeyError):
    """A label that the caller asked for is absent from every structure."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModelFileError(PimlipError, ValueError):
    """A model file is missing, truncated, tampered with or not a pimlip_ase model."""


class LabellingError(PimlipError, RuntimeError):
    """A reference calculation failed (e.g. SCF did not converge)."""
