"""The zero-shot tasks the W4A4 papers report, as lm-evaluation-harness defines them.

Each entry names the installed lm-eval task YAML it overrides, the split lm-eval scores, the fields the
YAML's templates read (the Hugging Face schema of the upstream dataset), the full split size and the
metric the papers report (``acc_norm`` where the task has it, else ``acc``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError


@dataclass(frozen=True)
class ZeroShotTask:
    name: str  # lm-eval task name, kept unchanged
    config: str  # the installed YAML, relative to lm_eval/tasks
    split: str  # the split lm-eval scores; the local file is <task>/<split>.jsonl
    fields: tuple[str, ...]  # fields every document must carry
    docs: int  # size of the full split
    metric: str  # the metric the papers report
    dataset: str  # upstream dataset
    license: str  # as stated by the upstream dataset card

    @property
    def filename(self) -> str:
        return f"{self.name}/{self.split}.jsonl"


TASKS: dict[str, ZeroShotTask] = {
    t.name: t
    for t in (
        ZeroShotTask(
            "piqa", "piqa/piqa.yaml", "validation", ("goal", "sol1", "sol2", "label"), 1838, "acc_norm",
            "ybisk/piqa", "AFL-3.0",
        ),
        ZeroShotTask(
            "hellaswag", "hellaswag/hellaswag.yaml", "validation",
            ("activity_label", "ctx_a", "ctx_b", "endings", "label"), 10042, "acc_norm", "Rowan/hellaswag", "MIT",
        ),
        ZeroShotTask(
            "arc_easy", "arc/arc_easy.yaml", "test", ("question", "choices", "answerKey"), 2376, "acc_norm",
            "allenai/ai2_arc ARC-Easy", "CC BY-SA 4.0",
        ),
        ZeroShotTask(
            "arc_challenge", "arc/arc_challenge.yaml", "test", ("question", "choices", "answerKey"), 1172,
            "acc_norm", "allenai/ai2_arc ARC-Challenge", "CC BY-SA 4.0",
        ),
        ZeroShotTask(
            "winogrande", "winogrande/default.yaml", "validation", ("sentence", "option1", "option2", "answer"),
            1267, "acc", "allenai/winogrande winogrande_xl", "CC-BY",
        ),
        ZeroShotTask(
            "lambada_openai", "lambada/lambada_openai.yaml", "test", ("text",), 5153, "acc",
            "EleutherAI/lambada_openai (OpenAI's LAMBADA test file)", "MIT",
        ),
        ZeroShotTask(
            "boolq", "super_glue/boolq/default.yaml", "validation", ("passage", "question", "label"), 3270, "acc",
            "super_glue boolq", "CC BY-SA 3.0",
        ),
    )
}  # fmt: skip

# The six-task set every W4A4 paper averages (QuaRot, SpinQuant, FlatQuant, FPTQuant); BoolQ is extra.
PAPER_TASKS = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande", "lambada_openai")
ALIASES = {"paper": PAPER_TASKS, "all": tuple(TASKS)}


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[ZeroShotTask]:
    """``"paper"``, ``"all"`` or task names (comma-separated or a list), in order, without repeats."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[ZeroShotTask] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        expanded = ALIASES.get(name, (name,))
        for n in expanded:
            if n not in TASKS:
                known = ", ".join([*TASKS, *ALIASES])
                raise ConfigError(f"unknown zero-shot task {n!r}; known tasks: {known}")
            if TASKS[n] not in out:
                out.append(TASKS[n])
    if not out:
        raise ConfigError("no zero-shot task given; e.g. --tasks paper or --tasks piqa,arc_easy")
    return out
