"""Docker engine releases and what is known to break between them: moby#51798, the engines that compute the
IPsec SPIs of encrypted overlays unlike every other release (fixed in 29.2.1 by going back to the old way,
moby#51951), so that no encrypted overlay traffic passes between them and the others."""

from __future__ import annotations

import re

Release = tuple[int, int, int]

SPI_CHANGED = ((29, 0, 0), (29, 2, 0))
SPI_CHANGED_ALSO = ((28, 2, 2), (25, 0, 13), (25, 0, 14))
SPI_ENGINES = "29.0.0 to 29.2.0, 28.2.2, 25.0.13 and 25.0.14"


def engine_release(version: str | None) -> Release | None:
    """(major, minor, patch) of an engine version or a package version pin (`5:29.1.3-1~debian.12~bookworm`,
    `28.5.2+dfsg4-5`), None when it has none."""
    match = re.match(r"(?:\d+:)?(\d+)\.(\d+)\.(\d+)", version or "")
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def changed_spi(release: Release) -> bool:
    """Whether an engine release computes encrypted overlays' SPIs the moby#51798 way."""
    return SPI_CHANGED[0] <= release <= SPI_CHANGED[1] or release in SPI_CHANGED_ALSO


def shown(release: Release) -> str:
    return ".".join(map(str, release))
