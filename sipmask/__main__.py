"""`python -m sipmask` runs the command line."""
import sys

from sipmask.cli import main

sys.exit(main())
