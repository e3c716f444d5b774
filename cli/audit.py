"""``takedown audit verify|anchor|show``: check the audit chain, keep its signed head, read it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cli.context import Context
from cli.output import emit_json, json_option
from registry.errors import InvalidInput


@click.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@click.option("--anchors", "anchor_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="A file of anchors (JSON lines, as 'takedown audit anchor' or /readyz's "
                   "audit_head write them); repeatable.")
@click.option("--head", "heads", multiple=True, metavar="ID:DIGEST",
              help="An audit head seen earlier (e.g. in /readyz); repeatable.")
@click.option("--no-saved", is_flag=True,
              help="Leave out the anchors the serving processes saved in the data directory.")
@json_option()
@click.pass_obj
def verify(ctx: Context, anchor_files: tuple[str, ...], heads: tuple[str, ...], no_saved: bool,
           as_json: bool) -> None:
    """Walk the audit chain and name the first broken link; check every anchor (a head
    published earlier) is still in it, so a cut-off tail or an emptied table shows. Exits 1 when
    anything is wrong."""
    from registry.service.audit import Anchor, read_anchors

    anchors = [Anchor.parse(h, f"--head {h}") for h in heads]
    for name in anchor_files:
        anchors += read_anchors(Path(name))
    report = ctx.registry(load_index=False).verify_audit(anchors, saved=not no_saved)
    if as_json:
        emit_json(report.to_json())
    else:
        if report.broken_at is not None:
            click.echo(f"BROKEN: event {report.broken_at} does not follow from the one before "
                       "it (edited, deleted or reordered events).", err=True)
        for problem in report.problems:
            click.echo(f"BROKEN: {problem}.", err=True)
        if report.ok:
            click.echo(f"Audit chain intact: {report.events} events, {report.anchors} "
                       "anchor(s) checked.")
    if not report.ok:
        sys.exit(1)


@audit.command("anchor")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Append the head to this file (JSON lines) as well as printing it.")
@click.pass_obj
def anchor(ctx: Context, out: str | None) -> None:
    """Print the audit chain's head (newest event id and digest, signed with
    TAKEDOWN_SECRET_KEY when set): keep it somewhere the database cannot reach, and give it to
    'takedown audit verify --anchors' later."""
    head = ctx.registry(load_index=False).audit_head()
    if head is None:
        raise InvalidInput("The audit log is empty.")
    line = json.dumps(head.to_json(), separators=(",", ":"))
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    emit_json(head.to_json())


@audit.command("show")
@click.option("--case", "case", metavar="NUMBER", default=None,
              help="Only what concerns this case: its events and its signals' matches.")
@click.option("--platform", default=None, metavar="NAME",
              help="Only what this platform did and what was done to it.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True,
              help="The newest this many events (and matches).")
@json_option()
@click.pass_obj
def show(ctx: Context, case: str | None, platform: str | None, limit: int,
         as_json: bool) -> None:
    """Print the audit log's newest events, of one case or platform if named, newest first.
    Exits 1 for an unknown case or platform. No hash value is printed: the log holds none."""
    trail = ctx.registry(load_index=False).audit_trail(case, platform, limit)
    if as_json:
        emit_json(trail)
        return
    events = trail["events"]
    assert isinstance(events, list)
    for e in events:
        details = json.dumps(e["details"], sort_keys=True, ensure_ascii=False)
        click.echo(f"#{e['id']}  {e['at']}  {e['actor']}  {e['action']}"
                   f"{'  ' + e['subject'] if e['subject'] else ''}  {details}")
    if not events:
        click.echo("No audit events.")
    matches = trail.get("matches")
    if isinstance(matches, list):
        click.echo(f"Matches of case {trail['case']}'s signals: {len(matches)}"
                   f"{' (newest ' + str(limit) + ')' if len(matches) == limit else ''}")
        for m in matches:
            feedback = ", ".join(m["feedback"]) or "no feedback"
            click.echo(f"  {m['match_id']}  {m['at']}  {m['platform'] or 'operator'}  "
                       f"{m['signal']} {m['tier']} distance {m['distance']}  {feedback}")
