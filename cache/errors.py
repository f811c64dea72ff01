"""The base class of errors meant for the user, shared by the storage layer and the pipeline."""


class UserError(Exception):
    """An error for the user: the CLI prints its message as one line and exits 2."""
