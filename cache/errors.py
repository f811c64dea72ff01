"""The base class of errors meant for the user, shared by the storage layer and the pipeline."""


class UserError(Exception):
    """An error for the user: the CLI prints its message as one line and exits 2."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_without_worker_traceback(args[0], type(self)),)
        super().__init__(*args)


def _without_worker_traceback(message: str, error_type: type) -> str:
    """The error's own message, when torch re-raised it from a DataLoader worker with the worker's traceback.

    torch re-raises an error of a worker as `error_type("Caught X in DataLoader worker process N.\\nOriginal
    Traceback ...")`, whose last line is `module.X: <message>`; the user should read that message alone.
    """
    if not message.startswith("Caught ") or "\nOriginal Traceback" not in message:
        return message
    marker = f"\n{error_type.__module__}.{error_type.__qualname__}: "
    at = message.rfind(marker)
    return message[at + len(marker) :].rstrip("\n") if at >= 0 else message
