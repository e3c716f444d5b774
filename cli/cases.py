"""``takedown case show|list|withdraw|unlock|reset-pin``: operators inspecting, withdrawing and
unlocking cases."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from cli.context import Context
from cli.output import JSON_LINES, emit_json, json_option
from registry.domain import CaseStatus

if TYPE_CHECKING:
    from registry.service import CaseView


@click.group()
def case() -> None:
    """Inspect, withdraw and unlock cases."""


def _print(view: CaseView) -> None:
    signals = ", ".join(f"{k}={n}" for k, n in sorted(view.signals.items())) or "none"
    click.echo(f"{view.number}\t{view.status.value}\tcreated {view.created_at:%Y-%m-%d %H:%M}Z"
               f"\tsignals: {signals}\ttakedowns: {view.takedowns}")


@case.command("show")
@click.argument("number")
@json_option()
@click.pass_obj
def show(ctx: Context, number: str, as_json: bool) -> None:
    """Show case NUMBER: status, signal counts, confirmed takedowns."""
    view = ctx.registry(load_index=False).show_case(number)
    emit_json(view.to_json()) if as_json else _print(view)


@case.command("list")
@click.option("--status", type=click.Choice([s.value for s in CaseStatus]), default=None)
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@json_option(JSON_LINES)
@click.pass_obj
def list_cmd(ctx: Context, status: str | None, limit: int, as_json: bool) -> None:
    """List cases, newest first."""
    views = ctx.registry(load_index=False).list_cases(CaseStatus(status) if status else None,
                                                      limit)
    for view in views:
        emit_json(view.to_json()) if as_json else _print(view)


@case.command("withdraw")
@click.argument("number")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option()
@click.pass_obj
def withdraw(ctx: Context, number: str, yes: bool, as_json: bool) -> None:
    """Withdraw case NUMBER: its hashes stop matching at once (audited as an operator action)."""
    if not yes:
        click.confirm(f"Withdraw case {number}? Its hashes will stop matching", abort=True,
                      err=True)
    view = ctx.registry(load_index=False).operator_withdraw_case(number)
    emit_json(view.to_json()) if as_json else _print(view)


@case.command("unlock")
@click.argument("number")
@json_option()
@click.pass_obj
def unlock(ctx: Context, number: str, as_json: bool) -> None:
    """Clear every wrong-PIN lockout of case NUMBER, on every device (audited)."""
    cleared = ctx.registry(load_index=False).unlock_case(number)
    if as_json:
        emit_json({"case": number, "cleared": cleared})
    else:
        click.echo(f"Case {number}: {cleared} wrong-PIN counter(s) cleared.")


@case.command("reset-pin")
@click.argument("number")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option()
@click.pass_obj
def reset_pin(ctx: Context, number: str, yes: bool, as_json: bool) -> None:
    """Give case NUMBER a new PIN, shown once (audited): only after checking, out of band, that
    the person asking is the one the case belongs to. The old PIN stops working."""
    if not yes:
        click.confirm(f"Give case {number} a new PIN? The old PIN will stop working",
                      abort=True, err=True)
    pin = ctx.registry(load_index=False).reset_case_pin(number)
    if as_json:
        emit_json({"case": number, "pin": pin})
    else:
        click.echo(f"Case {number}: the new PIN is {pin} (shown once; the old one no longer "
                   "works).")


@case.command("purge")
@click.argument("number")
@click.option("--force", is_flag=True, help="Purge even though some feed readers have not read "
              "the withdrawal yet (they keep the hashes; the audit event names them).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option()
@click.pass_obj
def purge(ctx: Context, number: str, force: bool, yes: bool, as_json: bool) -> None:
    """Erase withdrawn case NUMBER's hashes for good (the erasure path): the values leave the
    database and the index snapshot; an audit event holding no hash records it. Waits until
    every platform reading the feed has read the withdrawal (exit 1 naming them)."""
    if not yes:
        click.confirm(f"Erase case {number}'s hashes for good? This cannot be undone",
                      abort=True, err=True)
    report = ctx.registry().purge_case(number, force=force)
    if as_json:
        emit_json(report.to_json())
    elif report.signals:
        left = f"; {', '.join(report.behind)} had not read the withdrawal" if report.behind \
            else ""
        click.echo(f"Case {report.case}: {report.signals} hashes erased for good{left}.")
    else:
        click.echo(f"Case {report.case} holds no hashes to erase (purged already).")
