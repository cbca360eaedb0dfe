"""`python -m launch.torchrun [torchrun flags] -m trainer COMMAND ...`: torchrun that exits with the trainer's code.

torchrun turns any failure of its workers into exit code 1 (its `main` re-raises ChildFailedError), which
the Training Operator's ExitCode restart policy reads as permanent. This runs torchrun's own launcher
in-process and exits with what actually happened, so that the policy restarts exactly the failures a
restart can cure:

- a worker failed: the exit code of the first failure (the root cause), e.g. 2 for a bad flag (permanent),
  138 for a store outage or a lost rank, 143 after SIGTERM (retryable); a worker killed by signal N: 128 + N;
- torchrun itself got a signal (the pod is being deleted or preempted): 128 + N;
- torchrun itself failed (rendezvous timeout, the master's store gone while the group restarts): 138.

It imports only torch and trainer: it runs inside the job's pods, like torchrun.
"""

from __future__ import annotations

import signal
import sys

from trainer.errors import EXIT_RETRYABLE

PREFIX = "[launch.torchrun]"


def signal_exit_code(code: int) -> int:
    """A process killed by signal N reports -N to its parent; shells and Kubernetes report 128 + N."""
    return 128 - code if code < 0 else code


def _say(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def _kind(code: int) -> str:
    return "retryable" if code >= 128 else "permanent"


def main(argv: list[str] | None = None) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        torchrun.run(args)
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        code = signal_exit_code(failure.exitcode)
        how = f"was killed by signal {-failure.exitcode}" if failure.exitcode < 0 else f"exited with {code}"
        _say(f"rank {rank} {how}: exiting {code} ({_kind(code)})")
        return code
    except SignalException as stopped:
        code = 128 + int(stopped.sigval)
        _say(f"torchrun got {signal.Signals(stopped.sigval).name}: exiting {code} ({_kind(code)})")
        return code
    except Exception as error:  # noqa: BLE001 - torchrun's own failure: rendezvous, store, network
        _say(f"torchrun failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}): "
             f"exiting {EXIT_RETRYABLE} (retryable)")
        return EXIT_RETRYABLE
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
