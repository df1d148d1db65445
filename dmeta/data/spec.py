"""Parse ``--data`` specs: ``synthetic``, ``NAME:PATH`` or ``NAME`` (path from the shared data folder)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from dmeta.data.frames import DataError

# Folder under the shared data root that a named loader reads when no path is given.
DEFAULT_FOLDERS = {
    "walmart": "walmart_recruiting",
    "groceries": "groceries_kaggle",
    "completejourney": "cj8451_completejourney",
    "favorita": "favorita_store_sales",
    "rossmann": "rossmann",
    "frat": "dunnhumby_breakfast_at_the_frat",
    "cainiao": "cainiao",
    "cdnow": "cdnow",
    "userbehavior": "userbehavior",
}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value: loader ``name`` and ``path`` (None for synthetic)."""

    name: str
    path: Path | None


def data_root() -> Path:
    """``$DMETA_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("DMETA_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def parse_data_spec(spec: str) -> DataSpec:
    """``"synthetic"`` -> (synthetic, None); ``"walmart:/p"`` -> (walmart, /p); ``"walmart"`` -> shared folder."""
    name, _, path = spec.partition(":")
    name = name.strip().lower()
    if name == "synthetic":
        return DataSpec("synthetic", None)
    if path:
        resolved = Path(path).expanduser()
    elif name in DEFAULT_FOLDERS:
        resolved = data_root() / DEFAULT_FOLDERS[name]
    else:
        raise DataError(f"--data {spec!r}: give a path as {name}:PATH")
    if not resolved.exists():
        raise FileNotFoundError(f"--data {spec!r}: {resolved} does not exist")
    return DataSpec(name, resolved)
