"""``python -m fusion``: the command line (:mod:`cli`), kept under the library's name, which users know."""

import sys

from cli.main import main

sys.exit(main())
