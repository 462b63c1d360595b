"""Zero-shot accuracy with lm-evaluation-harness's own task definitions, from local (offline) data."""

from .harness import TaskScore, ZeroShotResult, evaluate_zeroshot
from .tasks import PAPER_TASKS, TASKS, ZeroShotTask, resolve_tasks

__all__ = ["PAPER_TASKS", "TASKS", "TaskScore", "ZeroShotResult", "ZeroShotTask", "evaluate_zeroshot", "resolve_tasks"]
