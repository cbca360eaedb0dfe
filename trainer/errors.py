"""The exceptions that end a run on purpose, and the exit code each one means.

The one error boundary (trainer.run.boundary) turns them into one line on stderr and the exit code below;
anything else is unexpected and becomes exit 1 with a crash report. The codes are the contract with the
Training Operator's ExitCode restart policy: 2 permanent (restarting cannot help), 138 and 143 retryable.
"""

EXIT_OK = 0
EXIT_CRASH = 1  # a bug or an error nobody classified: the crash report has the traceback
EXIT_USER_ERROR = 2  # bad input: a flag, a path, a file; the message names the fix
EXIT_RETRYABLE = 138  # 128 + SIGUSR1: the store stayed down, another rank died or stalled
EXIT_PREEMPTED = 143  # 128 + SIGTERM: evicted or preempted; a restart resumes from the checkpoint


class UserError(Exception):
    """Bad input from the user (a flag, a path, a file). The message names the problem and the fix."""

    exit_code = EXIT_USER_ERROR


class RetryableError(Exception):
    """A failure that a restart of the same command can cure; the last checkpoint is kept."""

    exit_code = EXIT_RETRYABLE


class Preempted(Exception):
    """SIGTERM ended the run (a checkpoint was written when the ranks could agree on one)."""

    exit_code = EXIT_PREEMPTED
