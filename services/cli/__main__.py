"""``python -m services.cli``: the ``cidserve`` command."""

import sys

from services.cli.main import main

sys.exit(main())
