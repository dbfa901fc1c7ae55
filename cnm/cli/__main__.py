"""``python -m cnm.cli``: the ``cnm`` command line."""

import sys

from cnm.cli import main

sys.exit(main())
