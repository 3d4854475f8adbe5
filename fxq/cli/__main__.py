"""`python -m fxq.cli ...` runs the fxq command line."""
import sys

from fxq.cli.main import main

sys.exit(main())
