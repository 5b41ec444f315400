"""User-facing errors: one line that names the file or flag and the fix, and an exit code."""


class UserError(Exception):
    """A mistake in what the user gave us. The CLI prints it as one line, never a traceback."""

    exit_code = 2


class MissingBackendError(UserError):
    """A target needs a runtime or converter that is not installed."""

    exit_code = 3


class AccuracyGateError(Exception):
    """--max-drop was exceeded. Raised after the report is written, so CI can still read it."""

    exit_code = 4

    def __init__(self, message: str, report: dict | None = None, folder=None):
        super().__init__(message)
        self.report = report  # the report that was written
        self.folder = folder  # and where
