"""``python -m mnv2.cli``: the ``mnv2`` command."""

import sys

from mnv2.cli import main

sys.exit(main())
