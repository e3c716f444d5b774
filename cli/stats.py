"""``takedown stats``: the registry at a glance, for its operator."""

from __future__ import annotations

from typing import Any

import click

from cli.context import Context
from cli.output import emit_json, json_option


@click.command("stats")
@json_option()
@click.pass_obj
def stats(ctx: Context, as_json: bool) -> None:
    """Cases by status, signals by bank, kind and status, platforms with their matches (all
    time, last day, last week) and feedback, the review queue (hashes reported
    'not_violating', quarantined ones), and the index's size and lag."""
    view: dict[str, Any] = ctx.registry().operator_stats()
    if as_json:
        emit_json(view)
        return
    cases = view["cases"]
    click.echo("Cases: " + (", ".join(f"{n} {s}" for s, n in sorted(cases.items())) or "none"))
    click.echo("Signals by bank:" if view["signals"] else "Signals: none")
    for bank, kinds in sorted(view["signals"].items()):
        parts = [f"{kind} " + "/".join(f"{n} {s}" for s, n in sorted(st.items()))
                 for kind, st in sorted(kinds.items())]
        click.echo(f"  {bank}: " + "; ".join(parts))
    click.echo("Platforms:" if view["platforms"] else "Platforms: none")
    for p in view["platforms"]:
        m = p["matches"]
        fb = ", ".join(f"{n} {o}" for o, n in sorted(p["feedback"].items())) or "no feedback"
        click.echo(f"  {p['name']} ({p['status']}, {'+'.join(p['scopes'])}): matches "
                   f"{m['all']} ({m['last_day']} last day, {m['last_week']} last week); {fb}")
    review = view["review"]
    click.echo(f"Review: {review['reported']} reported 'not_violating', "
               f"{review['quarantined']} quarantined")
    index = view["index"]
    live = ", ".join(f"{k} {n}" for k, n in sorted(index["live"].items()))
    click.echo(f"Index ({index['kind']}): {live}; at change {index['position']}, "
               f"{index['lag']} behind the database")
