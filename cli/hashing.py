"""``takedown hash``, ``submit`` and ``match``: hashing files locally, registering, matching."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from cli.context import Context
from cli.output import JSON_LINES, emit_json, json_option, read_file, show_progress
from registry.config import Settings
from registry.domain import QueryResult
from registry.errors import RegistryError

if TYPE_CHECKING:
    from registry.hashing import ImageSignals, VideoSignals

    Hashed = ImageSignals | VideoSignals

FILES = click.argument("files", nargs=-1, required=True,
                       type=click.Path(dir_okay=False, allow_dash=False))


def _hash_files(files: tuple[str, ...], settings: Settings, registration: bool = False
                ) -> Iterator[tuple[str, Hashed | RegistryError]]:
    """Each file's signals: a video's (MP4, MOV, WebM, MKV, AVI, by its first bytes) or an
    image's; or the error that stopped it."""
    from registry.hashing import DecodeOptions, VideoOptions, compute_signals
    from registry.hashing.video import compute_video_signals, container_of

    options, video = DecodeOptions.of(settings), VideoOptions.of(settings)
    with click.progressbar(files, label="Hashing", file=sys.stderr,
                           hidden=not show_progress(len(files))) as bar:
        for path in bar:
            try:
                data = read_file(path, max(settings.max_upload_bytes, settings.max_video_bytes))
                if container_of(data) is not None:
                    yield path, compute_video_signals(data, video, registration=registration)
                else:
                    yield path, compute_signals(data, options, registration=registration)
            except RegistryError as e:
                yield path, e


@click.command("hash")
@json_option(JSON_LINES)
@click.option("--variants", is_flag=True,
              help="Also compute the registered views (mirror, crops, rotations).")
@FILES
@click.pass_obj
def hash_cmd(ctx: Context, as_json: bool, variants: bool, files: tuple[str, ...]) -> None:
    """Compute the signals of image or video FILES locally (nothing is sent or stored)."""
    from registry.hashing import VideoSignals

    failed = False
    for path, result in _hash_files(files, ctx.settings, registration=variants):
        if isinstance(result, RegistryError):
            failed = True
            _report_error(path, result, as_json)
        elif as_json:
            emit_json({"file": path, **result.to_json()})
        elif isinstance(result, VideoSignals):
            kept = result.frames
            click.echo(f"{path}\tvideo frames={len(kept.frames)} "
                       f"duration={kept.duration_ms / 1000:.1f}s md5={result.md5.hex}")
        else:
            click.echo(f"{path}\tpdq={result.pdq.hex} quality={result.pdq_quality} "
                       f"phash={result.phash.hex} md5={result.md5.hex}")
    if failed:
        sys.exit(1)


def _report_error(path: str, err: RegistryError, as_json: bool) -> None:
    if as_json:
        emit_json({"file": path, "error": {"code": err.code, "message": err.message}})
    click.echo(f"Error: {path}: {err.message}", err=True)


@click.command()
@json_option('Print {"case": ..., "pin": ...}.')
@FILES
@click.pass_obj
def submit(ctx: Context, as_json: bool, files: tuple[str, ...]) -> None:
    """Register image or video FILES as one new case and print its case number and PIN
    (shown once).

    Hashing happens here; only the signals are stored. Nothing is registered unless every file
    hashes cleanly."""
    from registry.hashing import VideoSignals
    from registry.service import SubmittedImage

    images = []
    for path, result in _hash_files(files, ctx.settings, registration=True):
        if isinstance(result, RegistryError):
            raise type(result)(f"{path}: {result.message}")
        images.append(SubmittedImage.from_video(result) if isinstance(result, VideoSignals)
                      else SubmittedImage.from_image(result))
    receipt = ctx.registry(load_index=False).submit_case(images)
    if as_json:
        emit_json(receipt.to_json())
    else:
        click.echo(f"Case number: {receipt.number}\nPIN:         {receipt.pin}\n"
                   f"({receipt.signals} signals registered; the PIN is shown only once.)")


@click.command()
@json_option("One JSON object per file.")
@click.option("--url", default=None, help="Registry to ask (platform mode), e.g. "
              "https://registry.example.org; without it, the local database (operator mode).")
@click.option("--key", envvar="TAKEDOWN_API_KEY", default=None,
              help="Platform API key for --url [env TAKEDOWN_API_KEY].")
@FILES
@click.pass_obj
def match(ctx: Context, as_json: bool, url: str | None, key: str | None,
          files: tuple[str, ...]) -> None:
    """Hash FILES locally and match them. With --url, only the hashes are sent to that
    registry's API; without it, match against the local database (operator mode: matches carry
    their case number). Exit 0 whether or not anything matched; 1 if a file failed."""
    if url and not key:
        raise click.UsageError("--url needs --key (or TAKEDOWN_API_KEY).")
    if key and not url:
        raise click.UsageError("--key is only used with --url.")
    hashed: list[tuple[str, Hashed | RegistryError]] = list(
        _hash_files(files, ctx.settings))
    if url:
        assert key is not None
        from cli import client  # urllib and ssl: only in platform mode

        # Queries are numbered, not named by path (a path may be longer than an id may be);
        # a file the registry could not match gets its own error line, not the batch's.
        queries, sent = [], []
        for i, (path, r) in enumerate(hashed):
            if isinstance(r, RegistryError):
                continue
            try:
                queries.append(client.query_json(str(i), r, ctx.settings.pdq_min_quality))
                sent.append(i)
            except RegistryError as e:
                hashed[i] = (path, e)
        answers = client.match(
            url, key, queries, most=client.most_queries(url, ctx.settings.max_queries),
            max_bytes=ctx.settings.max_upload_bytes) if queries else []
        results = {hashed[i][0]: a for i, a in zip(sent, answers, strict=True)}
    else:
        good = [(p, r) for p, r in hashed if not isinstance(r, RegistryError)]
        registry = ctx.registry()
        from registry.hashing import VideoSignals

        found = registry.match([registry.query_of_video(p, r) if isinstance(r, VideoSignals)
                                else registry.query_of_image(p, r) for p, r in good])
        results = {p: _local_json(res) for (p, _), res in zip(good, found, strict=True)}
    failed = False
    for path, result in hashed:
        if isinstance(result, RegistryError):
            failed = True
            _report_error(path, result, as_json)
            continue
        _print_match(path, results[path], as_json)
    if failed:
        sys.exit(1)


def _local_json(result: QueryResult) -> dict[str, object]:
    return {"matched": result.matched,
            "matches": [m.to_json(with_case=True) for m in result.matches]}


def _print_match(path: str, result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json({"file": path, "matched": result["matched"], "matches": result["matches"]})
        return
    if not result["matched"]:
        click.echo(f"{path}\tno match")
    for m in result["matches"]:
        case = f"case={m['case']} " if "case" in m else ""
        click.echo(f"{path}\tMATCH {case}tier={m['tier']} signal={m['signal']} "
                   f"distance={m['distance']} bank={m['bank']} match_id={m['match_id']}")
