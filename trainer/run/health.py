"""Is the run healthy? The status every command's metrics.json carries, and the loss watch behind it.

- `ok`: nothing wrong was seen.
- `diverged`: the loss became non-finite (the run stops: exit 2, the last checkpoint kept) or climbed far
  above where it started (the run finishes, flagged, with the likely cause and fix in `status_reason`).
- `collapsed`: pretraining's loss sat at ln(K) for a whole epoch (SwAV's collapse signature).
- `below_baseline`: set by the report, which compares a pretrained trunk with its random-init twin.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from trainer.errors import UserError

log = logging.getLogger(__name__)

STATUSES = ("ok", "diverged", "collapsed", "below_baseline")
CLIMB_FACTOR = 3.0  # a mean epoch loss above 3x the first epoch's is no longer a noisy start


HEALTHY = {"status": "ok", "status_reason": ""}


class TrainingDiverged(UserError):
    """The loss became non-finite; the last good checkpoint is kept."""


@dataclass
class LossWatch:
    """Watches a run's loss, one value per epoch (or log step): `fix` names the likely cause and remedy."""

    fix: str
    first: float | None = None
    status: str = "ok"
    reason: str = ""

    def observe(self, loss: float, where: str) -> None:
        """Raise TrainingDiverged on a non-finite loss; flag (once) a loss that climbed far above its start."""
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at {where}; stopped, the last checkpoint is kept. "
                                   f"{self.fix}")
        if self.first is None:
            self.first = loss
        elif self.status == "ok" and loss > CLIMB_FACTOR * max(self.first, 1e-8):
            self.status = "diverged"
            self.reason = (f"the loss climbed from {self.first:.4g} to {loss:.4g} at {where} (over "
                           f"{CLIMB_FACTOR:g}x its start): the run diverged; {self.fix}")
            log.warning(self.reason)

    def flag(self, status: str, reason: str) -> None:
        """Record another finding (e.g. collapse) unless a worse one is already recorded."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {STATUSES}")
        if self.status == "ok":
            self.status, self.reason = status, reason

    def summary(self) -> dict[str, str]:
        """The fields every metrics.json carries."""
        return {"status": self.status, "status_reason": self.reason}
