"""``takedown index rebuild|verify|stats`` and ``takedown db upgrade``."""

from __future__ import annotations

import sys

import click

from cli.context import Context
from cli.output import emit_json, json_option


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@json_option()
@click.pass_obj
def upgrade(ctx: Context, as_json: bool) -> None:
    """Apply pending migrations to the configured database."""
    from registry.bootstrap import upgrade_database

    revision = upgrade_database(ctx.settings)
    if as_json:
        emit_json({"revision": revision})
    else:
        click.echo(f"Database is at revision {revision}.")


@click.group()
def index() -> None:
    """The in-memory matching index and its snapshot."""


@index.command("rebuild")
@json_option()
@click.pass_obj
def rebuild(ctx: Context, as_json: bool) -> None:
    """Rebuild the index from the database and write a fresh snapshot."""
    registry = ctx.registry(load_index=False)
    with click.progressbar(length=0, label="Loading signals", file=sys.stderr,
                           hidden=not sys.stderr.isatty()) as bar:
        count = registry.rebuild_index(progress=bar.update)
    stats = registry.index_stats()
    if as_json:
        emit_json({"indexed": count, "snapshot": registry.index_status().snapshot,
                   "position": stats["position"]})
    else:
        click.echo(f"Indexed {count} perceptual hashes at change {stats['position']}; "
                   f"snapshot written to {registry.index_status().snapshot}.")


@index.command("verify")
@json_option()
@click.pass_obj
def verify(ctx: Context, as_json: bool) -> None:
    """Check the index (snapshot + log) against the database; exit 1 on any difference."""
    report = ctx.registry().verify_index()
    if as_json:
        emit_json(report.to_json())
    else:
        checked = ", ".join(f"{k}={n}" for k, n in report.checked.items())
        click.echo(f"{'OK' if report.ok else 'MISMATCH'}: checked {checked} at change "
                   f"{report.position}")
        for label, part in (("missing", report.missing), ("extra", report.extra),
                            ("wrong", report.wrong)):
            for kind, ids in part.items():
                if ids:
                    click.echo(f"  {label} {kind}: {ids[:20]}", err=True)
    if not report.ok:
        sys.exit(1)


@index.command("stats")
@json_option()
@click.pass_obj
def stats(ctx: Context, as_json: bool) -> None:
    """Index size per signal, change-log position, database counts."""
    data = ctx.registry().index_stats()
    if as_json:
        emit_json(data)
        return
    click.echo(f"position {data['position']} (loaded from {data['loaded_from']})")
    kinds = data["kinds"]
    assert isinstance(kinds, dict)
    for kind, s in kinds.items():
        signals = f"\tsignals={s['signals']}" if "signals" in s else ""
        click.echo(f"{kind}\tlive={s['live']}\tbase={s['base']}\tdelta={s['delta']}\t"
                   f"tombstones={s['tombstones']}\tbytes={s['bytes']}{signals}")


@index.command("snapshot")
@json_option()
@click.pass_obj
def snapshot(ctx: Context, as_json: bool) -> None:
    """Write a snapshot of the current index (atomic) for fast restarts."""
    path = ctx.registry().save_snapshot()
    if as_json:
        emit_json({"snapshot": path})
    else:
        click.echo(f"Snapshot written to {path}.")
