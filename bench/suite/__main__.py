"""Command line of the suite: ``generate``, ``run`` and ``report`` (see ``bench/suite/__init__.py``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.suite.check import check
from bench.suite.generate import DEFAULT_SIZES, SPECS, generate, parse_sizes
from masktune_core.errors import MaskTuneError


def _generate(args: argparse.Namespace) -> None:
    sizes = parse_sizes(args.sizes)
    wanted = args.only.split(",") if args.only else [spec.name for spec in SPECS]
    unknown = sorted(set(wanted) - {spec.name for spec in SPECS})
    if unknown:
        raise MaskTuneError(
            f"only: unknown dataset {unknown[0]!r}; the suite has {', '.join(s.name for s in SPECS)}"
        )
    for spec in SPECS:
        if spec.name not in wanted:
            continue
        start = time.perf_counter()
        folder, written = generate(spec, Path(args.out), sizes, force=args.force)
        counts = check(folder)
        state = "written" if written else "up to date"
        print(f"{spec.name}: {state} in {time.perf_counter() - start:.1f} s, {folder}; groups {counts}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write the suite's datasets and read each back")
    gen.add_argument("--out", required=True, help="folder that receives one sub-folder per dataset")
    gen.add_argument(
        "--sizes",
        default=",".join(str(DEFAULT_SIZES[split]) for split in ("train", "val", "test")),
        help="images in train,val,test (multiples of 4); default %(default)s",
    )
    gen.add_argument("--only", help="comma-separated dataset names (default: all)")
    gen.add_argument("--force", action="store_true", help="rewrite datasets whose card already matches")
    args = parser.parse_args(argv)
    try:
        {"generate": _generate}[args.command](args)
    except MaskTuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
