"""The agent's lease: caps hold for ``lease_s`` after the request that set them; then the agent
itself lowers every GPU to min(safe cap, the cap it holds). Pure (the clock is passed in)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Lease:
    max_lease_s: float
    expires_s: float | None = None  # None: no lease held (start, or after the fall-back)

    def grant(self, lease_s: float, now_s: float) -> float:
        """Take a lease (shortened to ``max_lease_s``); returns the lease granted, s."""
        granted = min(lease_s, self.max_lease_s)
        self.expires_s = now_s + granted
        return granted

    def left_s(self, now_s: float) -> float:
        return 0.0 if self.expires_s is None else max(0.0, self.expires_s - now_s)

    def expired(self, now_s: float) -> bool:
        """True once, when a held lease has run out (the caller then applies the fall-back)."""
        if self.expires_s is not None and now_s >= self.expires_s:
            self.expires_s = None
            return True
        return False


def fallback_caps_w(held_w: Sequence[float | None], safe_w: Sequence[float]) -> list[float]:
    """Per GPU: min(safe, held): the fall-back never raises a cap; an unreadable cap gets the safe cap."""
    return [s if h is None or h != h else min(s, h) for h, s in zip(held_w, safe_w, strict=True)]
