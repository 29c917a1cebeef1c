"""The shared argparse types, for the command line (defined in :mod:`un2clip.argtypes`, below every layer)."""

from un2clip.argtypes import *  # noqa: F403
from un2clip.argtypes import __all__  # noqa: F401
