"""The interpreter (a pure core that decides) and the runtime that persists its decisions."""
