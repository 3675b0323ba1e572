"""``python -m sharpgaps <step> ...``: the one entry point of every pipeline job."""

import sys

from .pipeline.cli import main

sys.exit(main())
