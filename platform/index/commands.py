"""CLI of the index side: ``index build|search|enroll|add-identity|remove-identity|cluster``,
the top-level ``identify`` and ``search-face``, and ``people ...``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``index ...`` and ``identify`` to the ``facenet-platform`` parser."""
    from . import build_commands, gallery_commands, people_commands

    index = subparsers.add_parser("index", help="index photo collections, enroll people, cluster")
    index_sub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    build_commands.register(index_sub)
    gallery_commands.register(index_sub, subparsers)
    people_commands.register(subparsers)
