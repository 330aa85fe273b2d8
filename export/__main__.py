"""python -m export --help"""

import sys

from export.cli import main

sys.exit(main())
