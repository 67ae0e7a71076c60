"""``python -m leafid``: the ``leafid`` command line."""

import sys

from leafid.cli import main

sys.exit(main())
