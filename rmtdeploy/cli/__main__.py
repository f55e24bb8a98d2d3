"""``python -m rmtdeploy.cli``: the same entry point as the ``rmtdeploy`` command."""

import sys

from rmtdeploy.cli import main

sys.exit(main())
