"""``takedown import``, ``takedown export`` and ``takedown follow``: hash lists in and out of
banks, and another registry's feed followed into one."""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from cli.context import Context
from cli.output import emit_json, json_option
from registry.errors import UnreadableFile
from registry.interop import FORMATS, read

if TYPE_CHECKING:
    from registry.service.exchange import Step
    from registry.service.lists import ImportReport

FORMAT = click.Choice(FORMATS)


class _Counted(io.RawIOBase):
    """A file read through, telling a progress bar how many bytes went by."""

    def __init__(self, raw: IO[bytes], bar: Any) -> None:
        self.raw, self.bar = raw, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        self.bar.update(n or 0)
        return int(n or 0)


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=FORMAT, required=True, help="The list's format "
              "(docs/formats.md).")
@click.option("--bank", required=True, metavar="NAME",
              help="The bank it goes into (one per source; created when new).")
@click.option("--dry-run", is_flag=True, help="Check every record and count what would "
              "change; change nothing.")
@json_option("The report as one JSON object.")
@click.pass_obj
def import_cmd(ctx: Context, file: str, fmt: str, bank: str, dry_run: bool,
               as_json: bool) -> None:
    """Import hash list FILE into bank NAME, all or nothing: every value is checked as API
    input is, bad records are reported by line and then nothing is imported (exit 1).
    Importing the same file again changes nothing; a record the source marks deleted or
    withdrawn withdraws that hash here. Progress on stderr."""
    registry = ctx.registry(load_index=False)
    try:
        handle = open(file, "rb")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise UnreadableFile(f"{file} cannot be read: {e.strerror}.") from None
    with handle, click.progressbar(length=os.fstat(handle.fileno()).st_size,
                                   label=f"Importing {Path(file).name}", file=sys.stderr,
                                   hidden=not sys.stderr.isatty()) as bar:
        stream = io.BufferedReader(_Counted(handle, bar), 1 << 20)
        report = registry.import_list(bank, fmt, read(fmt, stream), dry_run=dry_run)
    if as_json:
        emit_json(report.to_json())
    else:
        _print_import(report, file)
    if not report.ok:
        sys.exit(1)


def _print_import(report: ImportReport, file: str) -> None:
    for p in report.problems:
        click.echo(f"{file}:{p.line}: {'skipped' if p.skipped else 'error'}: {p.reason}",
                   err=True)
    shown = report.errors + report.skipped
    if shown > len(report.problems):
        click.echo(f"... and {shown - len(report.problems)} more.", err=True)
    counts = (f"{report.rows} records: {report.added} added, {report.withdrawn} withdrawn, "
              f"{report.unchanged} unchanged, {report.duplicates} duplicate, "
              f"{report.skipped} skipped, {report.errors} bad")
    if not report.ok:
        click.echo(f"Nothing imported into bank '{report.bank}': {counts}.", err=True)
    elif report.dry_run:
        click.echo(f"Dry run, nothing changed; bank '{report.bank}' would get: {counts}.")
    else:
        click.echo(f"Imported into bank '{report.bank}': {counts}.")


@click.command("export")
@click.option("--bank", required=True, metavar="NAME")
@click.option("--format", "fmt", type=FORMAT, required=True)
@click.option("--since", default=None, metavar="CURSOR",
              help="Only hashes changed after this cursor (the one the last export printed).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the list to this file (whole or not at all) instead of stdout.")
@json_option("The summary (records, next cursor) as JSON: on stdout with --out, on stderr "
             "otherwise.")
@click.pass_obj
def export_cmd(ctx: Context, bank: str, fmt: str, since: str | None, out: str | None,
               as_json: bool) -> None:
    """Write bank NAME's hashes, active and withdrawn, in a list format; the next cursor
    goes to stderr. Raw hashes leave the registry: every export is audited."""
    registry = ctx.registry(load_index=False)
    if out is None:
        report = registry.export_list(bank, fmt, sys.stdout, since)
    else:
        target = Path(out)
        fd, tmp = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                report = registry.export_list(bank, fmt, f, since)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    if as_json:
        click.echo(json.dumps(report.to_json()), err=out is None)
    else:
        click.echo(f"Exported {report.records} hashes of bank '{bank}' ({fmt}); next cursor: "
                   f"{report.next_cursor}", err=True)


@click.command()
@click.argument("url")
@click.option("--key", envvar="TAKEDOWN_UPSTREAM_KEY", required=True,
              help="An API key of that registry with the feed scope [env "
                   "TAKEDOWN_UPSTREAM_KEY].")
@click.option("--bank", required=True, metavar="NAME", help="The local bank it goes into.")
@click.option("--once", is_flag=True, help="Catch up and exit instead of following.")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Seconds between reads once caught up.")
@click.option("--from-start", is_flag=True,
              help="Read the whole feed again (after that registry was restored): hashes "
                   "already here change nothing.")
@json_option("One JSON object per page that changed something.")
@click.pass_obj
def follow(ctx: Context, url: str, key: str, bank: str, once: bool, interval: float,
           from_start: bool, as_json: bool) -> None:
    """Follow the registry at URL: its hash feed, adds and withdrawals, into bank NAME. Each
    page is applied with its cursor in one transaction, so after a restart or a network error
    it resumes where it stopped. Without --once it keeps following until stopped (Ctrl-C);
    to run it inside 'serve', set TAKEDOWN_UPSTREAM_URL/_KEY/_BANK instead."""
    registry = ctx.registry(load_index=False)

    def report(result: Step) -> None:
        r = result.report
        if not (r.added or r.withdrawn or r.skipped):
            return
        if as_json:
            emit_json({"bank": bank, "records": result.records, "added": r.added,
                       "withdrawn": r.withdrawn, "skipped": r.skipped,
                       "cursor": result.cursor})
        else:
            click.echo(f"{bank}: +{r.added} -{r.withdrawn} ({r.skipped} skipped) at cursor "
                       f"{result.cursor}", err=True)

    if from_start:
        registry.restart_source(bank)
    if once:
        read_records = registry.follow_source(bank, url, key, on_step=report)
        if not as_json:
            click.echo(f"Caught up with {url}: {read_records} records read into bank "
                       f"'{bank}'.")
        return
    upstream = registry.upstream_of(bank, url, key, interval, on_step=report)
    click.echo(f"Following {url} into bank '{bank}' (Ctrl-C stops).", err=True)
    try:
        upstream.run()  # retries, with a growing pause, while URL or the database is down
    except KeyboardInterrupt:
        pass
    finally:
        upstream.stop()
