"""`python -m pytest_pgtopo ...` is the `pgtopo` command."""

import sys

from .cli import main

sys.exit(main())
