"""``python -m quantus_roar`` runs the ``quantus-roar`` command line."""

import sys

from quantus_roar.cli import main

sys.exit(main())
