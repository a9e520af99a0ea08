"""``python -m metallic.server``: the same as ``metallic-server``."""

import sys

from .cli import main

sys.exit(main())
