"""How a launched job ends badly, as the trainer's error boundary reports it (one line, an exit code)."""

from __future__ import annotations

from trainer.errors import EXIT_USER_ERROR, UserError


class JobFailed(UserError):
    """The job failed and a rerun cannot cure it: a permanent exit (the trainer's code, e.g. 2), the restart
    budget spent, a deadline passed. The step exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USER_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def is_retryable(exit_code: int) -> bool:
    """The Training Operator's rule for restartPolicy ExitCode: 128-255 retryable, 1-127 permanent."""
    return exit_code >= 128
