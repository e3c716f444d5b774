"""``takedown platform add|list|revoke|rotate``: platform API keys and their scopes."""

from __future__ import annotations

import click

from cli.context import Context
from cli.output import JSON_LINES, emit_json, json_option
from registry.domain import Platform, Scope


@click.group()
def platform() -> None:
    """Manage platforms and their API keys."""


def _print(p: Platform) -> None:
    scopes = ",".join(sorted(s.value for s in p.scopes))
    status = "active" if p.active else f"revoked {p.revoked_at:%Y-%m-%d %H:%M}Z"
    click.echo(f"{p.name}\t{p.key_prefix}…\tscopes={scopes}\t{status}")


@platform.command("add")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice([s.value for s in Scope]),
              help="Grant a scope (repeatable; default: match). 'feed' allows reading raw hashes.")
@json_option('Print {"platform": ..., "key": ...}.')
@click.pass_obj
def add(ctx: Context, name: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Create platform NAME and print its API key (shown only this once)."""
    p, key = ctx.registry(load_index=False).add_platform(name, [Scope(s) for s in scopes])
    if as_json:
        emit_json({"platform": p.name, "key": key,
                   "scopes": sorted(s.value for s in p.scopes)})
    else:
        click.echo(f"Platform: {p.name}\nAPI key:  {key}\n(The key is shown only once.)")


@platform.command("list")
@json_option(JSON_LINES)
@click.pass_obj
def list_cmd(ctx: Context, as_json: bool) -> None:
    """List platforms (keys are never shown, only their first characters)."""
    for p in ctx.registry(load_index=False).list_platforms():
        emit_json(p.to_json()) if as_json else _print(p)


@platform.command("revoke")
@click.argument("name")
@json_option()
@click.pass_obj
def revoke(ctx: Context, name: str, as_json: bool) -> None:
    """Revoke platform NAME's key, with immediate effect."""
    p = ctx.registry(load_index=False).revoke_platform(name)
    emit_json(p.to_json()) if as_json else _print(p)


@platform.command("rotate")
@click.argument("name")
@json_option('Print {"platform": ..., "key": ...}.')
@click.pass_obj
def rotate(ctx: Context, name: str, as_json: bool) -> None:
    """Give platform NAME a new key; the old one stops working at once."""
    p, key = ctx.registry(load_index=False).rotate_platform_key(name)
    if as_json:
        emit_json({"platform": p.name, "key": key})
    else:
        click.echo(f"Platform: {p.name}\nNew key:  {key}\n(The key is shown only once.)")
