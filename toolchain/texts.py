"""Text that is available offline: the default calibration and held-out sets."""

from __future__ import annotations

from pathlib import Path

HELDOUT_PATH = Path(__file__).parent / "data" / "heldout_legal.txt"


def pydoc_topics_text() -> str:
    """CPython's Python reference topics (`pydoc_data`): ~465 kB of technical prose
    that ships with every CPython, so calibration needs no files and no network."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def heldout_text() -> str:
    """Legal prose (GPL-3, Apache-2.0, MPL-2.0) never used for calibration."""
    return HELDOUT_PATH.read_text()


def read_text_file(path: str | Path) -> str:
    """A .txt file, or a .jsonl file whose records carry a `text` field."""
    import json

    from .errors import UserError

    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read text file {path}: {e}") from None
    if path.suffix != ".jsonl":
        return raw
    texts = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(str(json.loads(line)["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{n}: each JSONL line must be an object with a 'text' field") from None
    return "\n\n".join(texts)
