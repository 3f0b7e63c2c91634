"""`python -m catseg` is the `catseg` command; torchrun starts it as `torchrun ... -m catseg train ...`."""

import sys

from catseg.cli import main

sys.exit(main())
