"""argparse value types shared by the commands of every package (no heavy imports)."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "non_negative_int", "non_negative_float"]


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse ``type=``)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (argparse ``type=``)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0 (argparse ``type=``)."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
