"""ExportOutput: what every exporter returns. Text files by name, plus what could not be said."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from autotune import files

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ExportOutput:
    """The files one target needs, and every setting the target could not express.

    Attributes:
        files: file name -> text content, in the order a reader should look at them.
        warnings: one line per setting the target lacks (never dropped silently) or that needs a
            manual step in the target's training script.
    """

    files: dict[str, str]
    warnings: tuple[str, ...] = ()

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write every file under `out_dir` (created if needed) and return their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, text in self.files.items():
            path = out / name
            files.write_text(path, text)   # a link already at the path is replaced, not followed
            paths.append(path)
        logger.info("wrote %d file(s) to %s", len(paths), out)
        return paths
