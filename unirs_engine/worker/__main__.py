"""`python -m unirs_engine.worker --model DIR [--device D] [--clue-model DIR] [--heartbeat S]`."""

import sys

from .server import main

sys.exit(main())
