"""``python -m vitlab.cli`` (and ``python -m vitlab``) run the command line."""
import sys

from .main import main

sys.exit(main())
