"""`gitorch plan` between commits of a real repository: add, change, delete, rename, masking, size cap."""

from __future__ import annotations

import json

import pytest

from gitorch.source import desired
from gitorch.source.diffs import Action, diff_states
from gitorch.source.git import open_repository
from gitorch.source.rendering import PlanReport, plan_markdown
from tests.gitrepo import GitRepo
from tests.samples import CONFIG, NAMESPACE, SECRET, deployment, gitorch


@pytest.fixture
def history(repo: GitRepo) -> dict[str, str]:
    """Four commits: a first version, a change, a delete plus a file move, and a rename."""
    revs = {}
    revs["v1"] = repo.commit(
        "first",
        {
            "ns.yaml": NAMESPACE,
            "apps/config.yaml": CONFIG,
            "apps/secret.yaml": SECRET.format(password="hunter2"),
            "apps/web.yaml": deployment(),
        },
    )
    revs["v2"] = repo.commit(
        "scale and rotate",
        {"apps/web.yaml": deployment(replicas=5), "apps/secret.yaml": SECRET.format(password="s3cr3t-new")},
    )
    repo.move("apps/config.yaml", "config/config.yaml")
    repo.remove("apps/secret.yaml")
    repo.write({"apps/web.yaml": deployment(replicas=5).split("          env:\n")[0]})
    revs["v3"] = repo.commit("drop the secret, move the config")
    repo.write({"apps/web.yaml": deployment(name="frontend", replicas=5).split("          env:\n")[0]})
    revs["v4"] = repo.commit("rename web to frontend")
    return revs


def _plan(repo: GitRepo, base: str, head: str) -> PlanReport:
    r = open_repository(repo.path)
    b, h = desired.load(r, base), desired.load(r, head)
    assert h.ok, [d.format() for d in h.diagnostics]
    return PlanReport(b.revision, h.revision, diff_states(b, h), h.diagnostics)


def test_plan_from_empty_creates_everything(repo: GitRepo, history: dict[str, str]) -> None:
    report = _plan(repo, "", history["v1"])
    assert report.changes.summary == "Plan: 4 to add, 0 to change, 0 to destroy."
    assert {c.action for c in report.changes.changes} == {Action.CREATE}


def test_plan_change_shows_field_diffs(repo: GitRepo, history: dict[str, str]) -> None:
    report = _plan(repo, history["v1"], history["v2"])
    assert report.changes.summary == "Plan: 0 to add, 2 to change, 0 to destroy."
    web = next(c for c in report.changes.changes if c.key.name == "web")
    assert [(f.op.value, f.path, f.old, f.new) for f in web.fields] == [("~", "spec.replicas", 3, 5)]


def test_plan_delete_and_file_move(repo: GitRepo, history: dict[str, str]) -> None:
    report = _plan(repo, history["v2"], history["v3"])
    by_name = {c.key.name: c for c in report.changes.changes}
    assert by_name["web-secret"].action is Action.DELETE
    assert by_name["web-config"].action is Action.UNCHANGED
    assert by_name["web-config"].note == "moved from apps/config.yaml"
    assert by_name["web"].action is Action.UPDATE
    assert report.changes.summary == "Plan: 0 to add, 1 to change, 1 to destroy."


def test_plan_rename_is_a_create_and_a_destroy_with_a_note(repo: GitRepo, history: dict[str, str]) -> None:
    report = _plan(repo, history["v3"], history["v4"])
    by_name = {c.key.name: c for c in report.changes.changes}
    assert by_name["frontend"].action is Action.CREATE
    assert by_name["frontend"].note == "renamed from web"
    assert by_name["web"].action is Action.DELETE
    assert report.changes.summary == "Plan: 1 to add, 0 to change, 1 to destroy."


def test_cli_text_json_markdown_and_exit_codes(repo: GitRepo, history: dict[str, str]) -> None:
    text = gitorch("plan", "--base", history["v1"], "--head", history["v2"], cwd=repo.path)
    assert text.returncode == 0, text.stderr
    assert "~ Deployment shop/web  will be changed" in text.stdout
    assert "~ spec.replicas: 3 -> 5" in text.stdout
    assert text.stdout.rstrip().endswith("Plan: 0 to add, 2 to change, 0 to destroy.")

    detailed = gitorch("plan", "--base", history["v1"], "--head", history["v2"], "--detailed-exitcode", cwd=repo.path)
    assert detailed.returncode == 2
    same = gitorch("plan", "--base", history["v2"], "--head", history["v2"], "--detailed-exitcode", cwd=repo.path)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "No changes." in same.stdout

    as_json = json.loads(
        gitorch("plan", "--base", history["v1"], "--head", history["v2"], "--format", "json", cwd=repo.path).stdout
    )
    assert as_json["summary"]["change"] == 2
    assert as_json["head"]["commit"] == history["v2"]

    md = gitorch("plan", "--base", history["v1"], "--head", history["v2"], "--format", "markdown", cwd=repo.path).stdout
    assert md.index("**Plan: 0 to add, 2 to change, 0 to destroy.**") < md.index("<details>")
    assert "```diff\n- spec.replicas: 3\n+ spec.replicas: 5\n```" in md


def test_bad_revision_is_one_clear_line(repo: GitRepo, history: dict[str, str]) -> None:
    res = gitorch("plan", "--base", "no-such-branch", cwd=repo.path)
    assert res.returncode == 1
    assert "no such revision 'no-such-branch'" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_secret_values_never_appear(repo: GitRepo, history: dict[str, str], fmt: str) -> None:
    pairs = (("", history["v1"], True), (history["v1"], history["v2"], True), (history["v2"], history["v3"], False))
    for base, head, shows_secret_fields in pairs:
        args = ["plan", "--head", head, "--format", fmt] + (["--base", base] if base else [])
        res = gitorch(*args, cwd=repo.path)
        assert res.returncode == 0, res.stderr
        for secret in ("hunter2", "s3cr3t-new"):
            assert secret not in res.stdout and secret not in res.stderr
        if shows_secret_fields or fmt != "text":  # text lists no fields of deleted objects
            assert "(sensitive value)" in res.stdout


def test_markdown_is_cut_below_the_comment_limit(repo: GitRepo) -> None:
    files = {"ns.yaml": NAMESPACE, "apps/config.yaml": CONFIG}
    for i in range(400):
        files[f"apps/cm-{i}.yaml"] = (
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  namespace: shop\ndata:\n"
            + "".join(f"  key{j}: {'x' * 40}\n" for j in range(20))
        )
    head = repo.commit("many configmaps", files)
    report = _plan(repo, "", head)
    md = plan_markdown(report)
    assert len(md) < 65_536
    assert md.startswith("<!-- gitorch-plan -->")
    assert "**Plan: 402 to add, 0 to change, 0 to destroy.**" in md
    assert "too large for one comment" in md
    assert md.count("<details>") == md.count("</details>") > 10
