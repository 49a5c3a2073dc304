"""The CI workflow in docs/ parses and only uses options `gitorch plan` has."""

from __future__ import annotations

import re
from pathlib import Path

from gitorch.source.manifests import load_plain
from tests.samples import gitorch

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_plan_workflow_uses_real_plan_options(tmp_path: Path) -> None:
    workflow = load_plain((DOCS / "github-actions-plan.yml").read_text())
    runs = "\n".join(step.get("run", "") for step in workflow["jobs"]["plan"]["steps"])
    assert "gitorch plan" in runs
    options = set(re.findall(r"(--[a-z-]+)", runs.split("gitorch plan", 1)[1].split("> plan.md")[0]))
    help_text = gitorch("plan", "--help", cwd=tmp_path).stdout
    assert options and all(o in help_text for o in options), options
    script = workflow["jobs"]["plan"]["steps"][-2]["with"]["script"]
    assert "<!-- gitorch-plan -->" in script  # the marker plan_markdown starts with, to update one comment
