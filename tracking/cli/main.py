"""``tokcal`` command line: a thin layer over the library, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn, Sequence

from tokcal.errors import TokcalError

# Each module tokcal.cli.<name> defines ``register(subparsers)``, which adds its parser
# and sets ``func`` (args -> exit code).
SUBCOMMANDS: list[str] = ["extract", "sync", "backfill", "train", "report", "compare", "demo"]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line that says where to look, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tokcal",
        description="Decision-token probabilities and calibration for fine-tuned LLMs.",
        epilog="Run 'tokcal COMMAND --help' for each command's options and an example.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"tokcal.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TokcalError as exc:
        if args.verbose:
            raise
        print(f"tokcal {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tokcal {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
