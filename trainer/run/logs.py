"""The one logging set-up: rank-aware lines on stderr, progress bars on a terminal and plain lines in a pod.

Rank 0 logs INFO, the other ranks only warnings and errors (their problems still reach the pod log). The
rank comes from the RANK variable that torchrun and the Training Operator set (read through trainer.env),
so it is known before the process group exists.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

from trainer import env

log = logging.getLogger(__name__)
T = TypeVar("T")

def setup_logging() -> None:
    rank = env.current().rank
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s", force=True)


def progress(items: Iterable[T], total: int, desc: str, enabled: bool = True) -> Iterator[T]:
    """Yield `items`, reporting progress on stderr (a bar on a TTY, a line every UNMIX_PROGRESS_EVERY_S otherwise)."""
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, dynamic_ncols=True)
        return
    every_s = env.current().progress_every_s
    start = last = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= every_s or done == total:
            last = now
            log.info("%s: %d/%d batches (%.0fs)", desc, done, total, now - start)
