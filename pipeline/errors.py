"""User-facing errors of the pipeline; the CLI prints them without a traceback."""

from cache.errors import UserError


class MissingInputError(UserError, FileNotFoundError):
    """An input file or directory the run needs does not exist."""


class RunExistsError(UserError, FileExistsError):
    """The output directory already holds a run that this one would overwrite."""


__all__ = ["MissingInputError", "RunExistsError", "UserError"]
