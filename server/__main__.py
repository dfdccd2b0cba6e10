"""python -m server ... is movierec serve ..."""

import sys

from movierec.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
