"""The ``dislotrack`` command line: a thin dispatcher over the subpackages.

Each subcommand's implementation lives beside the code it drives and is
imported lazily, so ``dislotrack generate`` never imports torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write synthetic labelled images or movies")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="number of images (or movies)")
    p.add_argument("--size", type=int, default=256, help="image side [px] (default 256)")
    p.add_argument("--mode", choices=["hrtem", "stem", "mixed"], default="mixed")
    p.add_argument("--movie", type=int, default=0, metavar="FRAMES",
                   help="write movies of FRAMES frames instead of single images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from dislotrack.data_gen.export import generate_dataset

    generate_dataset(out=args.out, n=args.n, size=args.size, mode=args.mode,
                     movie_frames=args.movie, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level argument parser."""
    parser = argparse.ArgumentParser(
        prog="dislotrack",
        description="Find and track dislocations in electron-microscopy movies.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    sub.add_parser("train", help="train a model (LightningCLI: fit / validate / test; "
                   "see `dislotrack train --help`)", add_help=False)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dislotrack")
    except PackageNotFoundError:  # running from a source tree without install
        return "unknown"


#: Subcommands whose arguments belong to LightningCLI (parsed there, not here).
_LIGHTNING_COMMANDS = {"train"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dislotrack`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _LIGHTNING_COMMANDS:
        from dislotrack.train.cli import train_main

        train_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
