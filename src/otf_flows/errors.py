"""One exception tree for otf_flows.

The CLI maps :class:`InputError` (and subclasses) to exit code 2 and every other
:class:`OtfError` to exit code 1.
"""


class OtfError(Exception):
    """Base class of every error raised by otf_flows."""


class InputError(OtfError):
    """Bad user input: campaign YAML, structure or xyz file, CLI argument."""


class ConfigError(InputError):
    """The campaign configuration is invalid."""


class BackendUnavailableError(OtfError):
    """A reference engine or ML backend cannot be used on this machine."""


class ReferenceFailedError(OtfError):
    """A reference (DFT) calculation failed after all retries."""


class FitFailedError(OtfError):
    """A model fit failed; the message names the log file."""


class StoreError(OtfError):
    """The store cannot be opened, read or written."""


class NotFoundError(InputError):
    """A campaign, model or benchmark named by the user does not exist."""
