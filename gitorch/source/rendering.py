"""Rendering: plans and diagnostics as text for terminals, markdown for pull requests, JSON for scripts.

Purely computational, no side effects: every function returns a string.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gitorch.model.diagnostics import Diagnostic, errors, warnings
from gitorch.model.revisions import Revision
from gitorch.source.diffs import Action, ChangeSet, FieldDiff, ObjectChange, Op

# GitHub refuses comments over 65,536 characters; keep a margin for the footer.
MARKDOWN_LIMIT = 65_536


@dataclass(frozen=True)
class PlanReport:
    """Everything `gitorch plan` shows: the two revisions, the change set and the diagnostics."""

    base: Revision
    head: Revision
    changes: ChangeSet
    diagnostics: Sequence[Diagnostic] = ()
    source: str = ""  # the repository (and folder) it was computed from
    standby: tuple[str, ...] = ()  # the head's standby Nodes (spec.standby): the cluster autoscaler's spares

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "base": _rev_json(self.base),
            "head": _rev_json(self.head),
            "summary": {
                "add": self.changes.count(Action.CREATE),
                "change": self.changes.count(Action.UPDATE),
                "destroy": self.changes.count(Action.DELETE),
                "unchanged": self.changes.count(Action.UNCHANGED),
                "text": self.changes.summary,
            },
            "changes": [c.to_json() for c in self.changes.changed()],
            "diagnostics": [d.to_json() for d in self.diagnostics],
            "standbyNodes": list(self.standby),
        }


def _rev_json(rev: Revision) -> dict[str, str] | None:
    if not rev.oid:
        return None
    return {"commit": rev.oid, "author": rev.author, "message": rev.subject, "time": rev.time}


def value(v: Any) -> str:
    """A field value as terraform shows it: strings quoted, the rest as JSON."""
    text = json.dumps(v, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def field_line(f: FieldDiff) -> str:
    if f.op is Op.ADD:
        return f"+ {f.path}: {value(f.new)}"
    if f.op is Op.REMOVE:
        return f"- {f.path}: {value(f.old)}"
    return f"~ {f.path}: {value(f.old)} -> {value(f.new)}"


def _rev_label(rev: Revision) -> str:
    return f"{rev.short} ({rev.subject})" if rev.oid else "(empty)"


def _change_title(c: ObjectChange) -> str:
    note = f"  [{c.note}]" if c.note else ""
    return f"{c.action.symbol} {c.key}  {c.action.verb}{note}"


def diagnostics_text(diags: Sequence[Diagnostic]) -> str:
    lines = [d.format() for d in diags]
    n_err, n_warn = len(errors(diags)), len(warnings(diags))
    if n_err or n_warn:
        lines.append(f"{n_err} error(s), {n_warn} warning(s)")
    return "\n".join(lines)


def plan_text(report: PlanReport, *, show_fields: bool = True) -> str:
    out = [f"gitorch plan: {_rev_label(report.base)} -> {_rev_label(report.head)}", ""]
    changed = report.changes.changed()
    if not changed:
        out.append("No changes. The cluster's desired state is the same in both revisions.")
    for c in changed:
        out.append(_change_title(c))
        if show_fields and c.action is not Action.DELETE:
            out.extend("    " + field_line(f) for f in c.fields)
        out.append("")
    moved = [c for c in report.changes.changes if c.action is Action.UNCHANGED and c.note]
    for c in moved:
        out.append(f"  {c.key}  unchanged  [{c.note}]")
    if moved:
        out.append("")
    if report.diagnostics:
        out.append(diagnostics_text(report.diagnostics))
        out.append("")
    if report.standby:
        out.append(_standby_line(report.standby))
        out.append("")
    out.append(report.changes.summary)
    return "\n".join(out) + "\n"


def _standby_line(nodes: Sequence[str]) -> str:
    return (f"Standby nodes: {', '.join(nodes)} (run no pods until pods fit on no active node; "
            "the cluster autoscaler activates and returns them, Git keeps saying standby)")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _md_details(c: ObjectChange) -> str:
    lines = []
    for f in c.fields:
        # diff fences colour `+`/`-` lines; show a change as the old line then the new.
        if f.op is Op.CHANGE:
            lines.append(f"- {f.path}: {value(f.old)}")
            lines.append(f"+ {f.path}: {value(f.new)}")
        else:
            lines.append(field_line(f))
    note = f" — {_md_escape(c.note)}" if c.note else ""
    body = "\n".join(lines).replace("```", "` ` `")
    return (
        f"<details><summary><code>{c.action.symbol}</code> <b>{_md_escape(str(c.key))}</b> "
        f"{c.action.verb} ({len(c.fields)} field{'s' if len(c.fields) != 1 else ''}){note}</summary>\n\n"
        f"```diff\n{body}\n```\n\n</details>\n"
    )


def plan_markdown(report: PlanReport, *, limit: int = MARKDOWN_LIMIT) -> str:
    """A pull-request comment: summary first, one collapsible block per object, under `limit`."""
    ch = report.changes
    head = [
        "<!-- gitorch-plan -->",
        f"### gitorch plan: `{report.base.short or 'empty'}` → `{report.head.short}`",
        "",
        f"**{ch.summary}**",
        "",
    ]
    if report.standby:
        head += [_md_escape(_standby_line(report.standby)), ""]
    errs, warns = errors(report.diagnostics), warnings(report.diagnostics)
    if errs or warns:
        head.append(f"**{len(errs)} error(s), {len(warns)} warning(s)** in `{report.head.short}`:")
        head.append("")
        head.append("```")
        head.extend(d.format().replace("```", "` ` `") for d in list(report.diagnostics)[:50])
        if len(report.diagnostics) > 50:
            head.append(f"... and {len(report.diagnostics) - 50} more (run `gitorch validate`)")
        head.append("```")
        head.append("")
    changed = ch.changed()
    if changed:
        head.append("| | object | action | file |")
        head.append("|---|---|---|---|")
    table = [
        f"| `{c.action.symbol}` | {_md_escape(str(c.key))} | {c.action.value} | `{_md_escape(c.path)}` |"
        for c in changed
    ]
    footer_cut = (
        "\n> **Note:** this plan is too large for one comment; {n} of {total} objects' details "
        "are not shown. Run `gitorch plan` locally to see all of it.\n"
    )
    text = "\n".join(head) + "\n"
    # The table alone may be too long for a huge plan: cut it with a visible note as well.
    kept_rows = 0
    reserve = len(footer_cut) + 200
    for row in table:
        if len(text) + len(row) + 1 > limit // 2:
            break
        text += row + "\n"
        kept_rows += 1
    if kept_rows < len(table):
        text += f"| | … {len(table) - kept_rows} more objects | | |\n"
    text += "\n"
    shown = 0
    for c in changed:
        block = _md_details(c)
        if len(text) + len(block) + reserve > limit:
            break
        text += block
        shown += 1
    if shown < len(changed):
        text += footer_cut.format(n=len(changed) - shown, total=len(changed))
    return text


def plan_json(report: PlanReport) -> str:
    # allow_nan=False: bare NaN or Infinity is not JSON (the parser refuses them in manifests).
    return json.dumps(report.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
