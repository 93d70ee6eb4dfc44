"""``python -m worker`` runs `processor` (worker.cli), as the console script does."""

import sys

from worker.cli import main

sys.exit(main())
