"""python -m mnist_zoo: see mnist_zoo/cli.py."""

import sys

from mnist_zoo.cli import main

sys.exit(main())
