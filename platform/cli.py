"""The ``facenet-platform`` command line.

Each command group lives next to the code it drives and registers itself here through a
``register(subparsers)`` function; this module only parses, sets up logging, and turns the
package's errors into one line on stderr and a non-zero exit.

Commands that run a model in this process set ``needs_model=True`` in their parser defaults; only
those start TensorFlow. The parser itself and every other command (``--help``, ``index cluster``,
``index build``, ``serve``, ...) import neither TensorFlow nor Ray nor FAISS until their handler
needs them: command modules import their heavy dependencies inside the handlers.

Exit codes: 0 success, 1 an error the user can fix (bad input, no face, missing file),
2 a usage error (argparse).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

# TensorFlow and Ray print start-up noise on stderr; the CLI keeps stderr for what the user
# must read. -v restores it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

logger = logging.getLogger("facenet_platform")

# Modules that add subcommands; each exposes register(subparsers).
COMMAND_MODULES: tuple[str, ...] = (
    "facenet_platform.core.commands",
    "facenet_platform.index.commands",
    "facenet_platform.train.commands",
    "facenet_platform.serve.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered command group."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="facenet-platform",
        description="Face recognition on FaceNet: verify, embed, evaluate, index, serve, train.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug with library start-up noise)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def configure_logging(verbose: int) -> None:
    """Log level from the count of ``-v`` (0 warning, 1 info, 2+ debug); below 2 the start-up
    noise of TensorFlow and other libraries stays hidden."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose >= 2:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``facenet-platform`` console script."""
    from .core.errors import FaceNetPlatformError

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if getattr(args, "needs_model", False) and args.verbose < 2:
        # Only commands that run a model in this process start TensorFlow (quietly: its C++
        # start-up lines; -vv keeps them). The others never import it.
        from .core.tensorflow_setup import start_tensorflow

        start_tensorflow(quiet=True)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return int(handler(args) or 0)
    except FaceNetPlatformError as exc:
        print(f"facenet-platform: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("facenet-platform: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
