"""``python -m un2clip.cli ...`` (what ``accelerate launch -m un2clip.cli`` runs)."""

import sys

from un2clip.cli import main

sys.exit(main())
