"""`python -m napari_ftu.cli` runs the command line."""

import sys

from napari_ftu.cli import main

sys.exit(main())
