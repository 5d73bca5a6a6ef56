"""A token bucket per source. In-process: each serve process limits what it accepts itself."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class Bucket:
    capacity: int
    per_ms: int
    tokens: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = float(self.capacity)

    def take(self, now: float | None = None) -> int:
        """0 when the request may pass, else the seconds to wait (for Retry-After)."""
        now = time.monotonic() if now is None else now
        rate = self.capacity / (self.per_ms / 1000)  # tokens per second
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, math.ceil((1 - self.tokens) / rate))
