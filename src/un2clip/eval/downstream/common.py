"""What the downstream evaluations share: naming the inputs they skip on the console."""

from __future__ import annotations

import sys
from collections.abc import Sequence

SHOWN = 3  # skipped inputs named on the console; the rest are counted


def skipped_message(what: str, reasons: Sequence[str], shown: int = SHOWN) -> str | None:
    """One console line naming the first ``shown`` skipped inputs and the count; None when none was skipped."""
    if not reasons:
        return None
    head = "; ".join(str(r) for r in reasons[:shown])
    more = f"; and {len(reasons) - shown} more" if len(reasons) > shown else ""
    return f"skipped {len(reasons)} {what}: {head}{more}"


def report_skipped(what: str, reasons: Sequence[str], shown: int = SHOWN) -> None:
    """Print :func:`skipped_message` to stderr when anything was skipped."""
    line = skipped_message(what, reasons, shown)
    if line:
        print(line, file=sys.stderr)
