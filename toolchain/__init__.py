"""liar-export compression stage: structured pruning + LIAR reconstruction."""

__version__ = "0.1.0"
