"""``python -m worker.ctl`` runs processorctl."""

import sys

from worker.ctl.cli import main

sys.exit(main())
