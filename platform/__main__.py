"""``python -m facenet_platform``: the same as the ``facenet-platform`` command."""

import sys

from facenet_platform.cli import main

sys.exit(main())
