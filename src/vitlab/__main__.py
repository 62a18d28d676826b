"""``python -m vitlab`` (used by ``torchrun -m vitlab train ...``)."""
import sys

from vitlab.cli.main import main

sys.exit(main())
