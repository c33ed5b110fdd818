"""``python -m phasevae.cli``: the ``phasevae`` command."""

import sys

from phasevae.cli import main

sys.exit(main())
