"""``python -m bridge``: the same as the ``gradbridge`` command."""

import sys

from bridge.cli import main

sys.exit(main())
