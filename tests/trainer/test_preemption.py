"""SIGTERM is honoured while the training loop waits for data, not only at its next log step."""

from __future__ import annotations

import os
import signal
import time

import pytest

from trainer.errors import Preempted
from trainer.run.preemption import PreemptionFlag


@pytest.mark.timeout(30)
def test_sigterm_ends_a_stalled_wait_for_data_at_once():
    flag = PreemptionFlag()
    try:
        started = time.monotonic()
        with pytest.raises(Preempted, match="waiting for data"), flag.waiting_for_data():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(20)  # a read that never returns
        assert time.monotonic() - started < 5 and flag.requested
    finally:
        flag.close()


def test_sigterm_outside_the_wait_only_sets_the_flag_and_the_old_handler_comes_back():
    previous = signal.getsignal(signal.SIGTERM)
    flag = PreemptionFlag()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert flag.requested
    # a request already pending ends the next wait before it starts
    with pytest.raises(Preempted), flag.waiting_for_data():
        pass
    flag.close()
    assert signal.getsignal(signal.SIGTERM) is previous
