"""``python -m dynamiclora_dev``."""

import sys

from dynamiclora_dev.cli import main

sys.exit(main())
