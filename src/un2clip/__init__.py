"""un2clip: make CLIP image encoders see visual details (un²CLIP) and measure it."""

__version__ = "0.1.0"
