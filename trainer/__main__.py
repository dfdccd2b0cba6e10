"""python -m trainer ... is movierec train ..."""

import sys

from movierec.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
