"""The one logging set-up: rank-aware lines on stderr, progress bars on a terminal and plain lines in a pod.

Rank 0 logs INFO, the other ranks only warnings and errors (their problems still reach the pod log). The
rank comes from the RANK variable that torchrun and the Training Operator set, so it is known before the
process group exists.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)
T = TypeVar("T")

LOG_EVERY_S = float(os.environ.get("UNMIX_PROGRESS_EVERY_S", "30"))


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s", force=True)


def progress(items: Iterable[T], total: int, desc: str, enabled: bool = True) -> Iterator[T]:
    """Yield `items`, reporting progress on stderr (a bar on a TTY, a line every LOG_EVERY_S otherwise)."""
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= LOG_EVERY_S or done == total:
            last = now
            log.info("%s: %d/%d batches (%.0fs)", desc, done, total, now - start)
