"""One error family for the whole library.

Every error a user can cause is an :class:`EdgepackError`. Its message is one line that says what
went wrong, which file or option it concerns, and what to do. The CLI prints that line and exits
with :attr:`EdgepackError.exit_code` (1, or 2 for usage errors); library code never calls
``sys.exit`` and never prints a traceback for these.
"""

from __future__ import annotations

import re

# Credentials that can ride in a user's text (a --storage URL, a DSN, an environment dump): URL userinfo
# (``scheme://user:PASSWORD@host``), ``password=``/``passwd=``/``pwd=`` keys (URL queries, libpq keyword
# strings, ``PGPASSWORD=`` environment style; quoted values too).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*):[^@/\s]*@")
_KEY_VALUE = re.compile(r"(?P<head>(?i:\w*(?:password|passwd|pwd))\s*=\s*)"
                        r"(?P<value>'(?:[^'\\]|\\.)*'?|\"[^\"]*\"?|[^\s&;,'\")]+)")
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with every credential replaced by ``***`` (the one redaction, for messages, logs,
    crash logs, trials.csv and manifests)."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m['head']}{REDACTED}", text)


class EdgepackError(Exception):
    """Base class; ``str(err)`` is the one line shown to the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message, hint = redact(message), (None if hint is None else redact(hint))  # never echo a password
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}; {hint}")


class UsageError(EdgepackError):
    """An option or argument that cannot work together with the others (exit code 2)."""

    exit_code = 2


class OptionError(UsageError):
    """An option value that is not one of the valid values."""

    def __init__(self, option: str, value: object, valid: list[str] | tuple[str, ...] | None = None,
                 *, hint: str | None = None) -> None:
        self.option, self.value, self.valid = option, value, valid
        msg = f"invalid value {value!r} for {option}"
        if valid:
            msg += f" (valid: {', '.join(valid)})"
        super().__init__(msg, hint=hint)


class ModelLoadError(EdgepackError):
    """The model file is missing, corrupt, of an unknown format, or unsafe to load."""


class UnsafeModelError(ModelLoadError):
    """Loading the model would run code stored in it (e.g. a Lambda layer)."""


class CalibrationError(EdgepackError):
    """Calibration or evaluation data is missing, malformed or does not fit the model."""


class ConversionError(EdgepackError):
    """The TFLite converter (or onnx2tf) failed on the model."""


class BudgetNotMet(ConversionError):
    """No quantized candidate met the accuracy budget (--max-drop/--min-sqnr/--min-agreement)."""


class TargetConstraintError(EdgepackError):
    """The produced model does not fit the chosen target (ops, size, memory, mode).

    ``facts`` holds what was measured (the targets layer's ``ModelFacts``: size, arena, Vela SRAM),
    so a caller that searches over settings can record how far a model missed."""

    def __init__(self, message: str, *, hint: str | None = None, facts: object | None = None) -> None:
        self.facts = facts
        super().__init__(message, hint=hint)


class StopRequested(EdgepackError):
    """A caller's hook asked a running conversion to stop (the tuner prunes a hopeless trial).

    It passes through the pipeline untouched, like Ctrl-C, instead of being wrapped as an internal error."""


class PackagingError(EdgepackError):
    """The bundle could not be written (existing output, permissions, disk)."""


class BundleError(EdgepackError):
    """A bundle on disk is missing files, or its manifest is invalid."""


class RuntimeUnavailable(EdgepackError):
    """The requested interpreter is not installed or cannot load the model."""


class ValidationFailed(EdgepackError):
    """Validation ran, and the bundle missed the user's accuracy budget."""


class InternalError(EdgepackError):
    """An unexpected exception inside a stage (edgepack's own bug or a third-party library's).

    ``stage`` names where it happened; the original exception is the ``__cause__``, and the CLI
    writes its full traceback to a log file whose path the one-line message gives."""

    def __init__(self, stage: str, err: BaseException) -> None:
        self.stage = stage
        text = (str(err).strip().splitlines() or [""])[0][:300]
        super().__init__(f"stage '{stage}' failed unexpectedly: {type(err).__name__}" + (f": {text}" if text else ""),
                         hint="this is a bug in edgepack or a library it uses; please report it with the log file")
