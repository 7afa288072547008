"""``python -m authfsm.cli``."""

from . import main

raise SystemExit(main())
