"""``python -m facenet_platform.train --config CONFIG.yaml [overrides]``: the ``train`` command as
a module, the entry point for ``ray job submit --working-dir . -- python -m facenet_platform.train``.

On a cluster, set ``run.ray_address: auto`` (or ``--ray-address auto``; a job started by
``ray job submit`` also has ``RAY_ADDRESS`` set) and a shared ``run.storage_path``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from facenet_platform.cli import configure_logging
    from facenet_platform.core.errors import FaceNetPlatformError

    from .commands import add_train_arguments, cmd_train

    parser = argparse.ArgumentParser(prog="python -m facenet_platform.train",
                                     description="Train or fine-tune a FaceNet embedding on Ray.")
    parser.add_argument("-v", "--verbose", action="count", default=1,
                        help="more logging (default: info; -vv debug)")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return cmd_train(args)
    except FaceNetPlatformError as exc:
        print(f"facenet_platform.train: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
