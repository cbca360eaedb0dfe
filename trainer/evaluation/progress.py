"""Progress for long loops: a tqdm bar on a terminal, plain periodic log lines in a pod log."""

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
