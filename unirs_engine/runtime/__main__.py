"""`python -m unirs_engine.runtime {setup,status}`: the managed engine environment from a terminal
(run from the plugin folder, or with PYTHONPATH pointing at it). QGIS users get the same from
Raster ▸ UniRS ▸ Set up engine… and `qgis_process.bin run unirs:setup_engine`."""

from __future__ import annotations

import argparse
import sys

from .environment import EngineNotSetUp, ManagedEnvironment, resolve_engine_python
from .installer import SetupError, setup_engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unirs_engine.runtime", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="build or update the managed engine environment (a no-op when current)")
    setup.add_argument("--force", action="store_true", help="rebuild even when up to date")
    setup.add_argument("--torch-index-url", default="", help="where torch comes from (a mirror or a CUDA wheel index)")
    setup.add_argument("--base-python", default=None, help="the Python that builds the environment")
    sub.add_parser("status", help="which Python runs the engine, and the managed environment's record")
    args = parser.parse_args(argv)

    if args.command == "status":
        record = ManagedEnvironment().record()
        try:
            print(f"engine python: {resolve_engine_python().describe()}")
        except EngineNotSetUp as exc:
            print(exc)
        print(f"managed environment: {record.to_dict() if record else 'none'} ({ManagedEnvironment().root})")
        return 0
    try:
        outcome = setup_engine(base_python=args.base_python, torch_index_url=args.torch_index_url,
                               force=args.force, log=lambda line: print(line, flush=True))
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; the previous environment is unchanged", file=sys.stderr)
        return 130
    print(outcome.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
