"""The zero-shot results table, as printed by the CLI."""

from __future__ import annotations

from .harness import ZeroShotResult


def format_table(result: ZeroShotResult, title: str) -> str:
    bos = "BOS prepended" if result.bos_prepended else "no BOS prepended"
    lines = [f"\nZero-shot accuracy, {title} (lm-eval {result.lm_eval_version}, 0-shot, {bos})"]
    lines.append(f"{'task':<16}{'metric':<10}{'value':>8}{'stderr':>9}{'n':>12}  data")
    for s in result.scores:
        stderr = f"{100 * s.stderr:.2f}" if s.stderr is not None else "-"
        note = s.source + ("" if s.exact is not False else " [not byte-identical to lm-eval's dataset]")
        n = f"{s.n}" if s.n == s.docs else f"{s.n}/{s.docs}"
        lines.append(f"{s.task:<16}{s.metric:<10}{100 * s.value:>8.2f}{stderr:>9}{n:>12}  {note}")
    mean = result.paper_mean
    lines.append(
        f"{'six-task mean':<26}{100 * mean:>8.2f}"
        if mean is not None
        else "six-task mean: n/a (needs the six full tasks)"
    )
    return "\n".join(lines)
