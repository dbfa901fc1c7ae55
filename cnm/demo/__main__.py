"""``python -m cnm.demo``: run the demo (``./run demo`` does this)."""

import contextlib
import sys

from cnm.demo import main

with contextlib.suppress(BrokenPipeError):
    sys.exit(main())
