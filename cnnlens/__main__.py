"""``python -m cnnlens``: the same as the ``cnnlens`` command (see :mod:`cnnlens.cli`)."""

import sys

from cnnlens.cli import main

sys.exit(main())
