"""`python -m unirs_engine.worker --model DIR [--device D] [--clue-model DIR] [--heartbeat S]` serves
the protocol; `python -m unirs_engine.worker --check [--model DIR] [--device D] [--json]` tests that
this Python runs the engine end to end (runtime/check.py) and exits."""

import argparse
import sys

from ..argtypes import add_model_arguments

if "--check" in sys.argv[1:]:
    parser = argparse.ArgumentParser(prog="python -m unirs_engine.worker --check")
    parser.add_argument("--check", action="store_true", required=True)
    add_model_arguments(parser, dtype=False)
    parser.add_argument("--json", action="store_true", help="one machine-readable report line")
    args = parser.parse_args()
    from ..runtime.check import main as check_main

    sys.exit(check_main(args.model, args.device, args.json))

from .server import exit_process, main  # noqa: E402 (the check must not take over stdout as a server)

exit_process(main())
