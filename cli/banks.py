"""``takedown bank list|add|disable|enable|set``, ``takedown canary``, ``takedown benign add``
and ``takedown quarantine list|hold|release``."""

from __future__ import annotations

from pathlib import Path

import click

from cli.context import Context
from cli.output import JSON_LINES, emit_json, json_option
from registry.domain import Bank, BankKind, Query, SignalKind, Thresholds, Tier
from registry.errors import InvalidInput


@click.group()
def bank() -> None:
    """The banks: one per source of hashes (submissions, each imported list, canary, benign)."""


@bank.command("list")
@json_option()
@click.pass_obj
def bank_list(ctx: Context, as_json: bool) -> None:
    """Every bank with its kind and its signals by status (the canary and benign banks too)."""
    banks = ctx.registry(load_index=False).list_banks()
    if as_json:
        emit_json(banks)
        return
    if not banks:
        click.echo("No banks.")
    for b in banks:
        counts = b["signals"]
        assert isinstance(counts, dict)
        signals = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no signals"
        about = f" - {b['description']}" if b["description"] else ""
        state = "" if b["enabled"] else ", disabled"
        limits = b["thresholds"]
        assert isinstance(limits, dict)
        own = "".join(f", {k} {s}:{w}" for k, (s, w) in limits.items())
        source = f", follows {b['source']}" if b["source"] else ""
        click.echo(f"{b['name']} ({b['kind']}{state}{own}{source}): {signals}{about}")


def _thresholds(values: tuple[str, ...]) -> dict[SignalKind, Thresholds]:
    out = {}
    for raw in values:
        name, _, pair = raw.partition("=")
        strong, _, weak = pair.partition(":")
        try:
            kind = SignalKind.parse(name)
            out[kind] = Thresholds(int(strong), int(weak or strong))
        except (ValueError, InvalidInput):
            raise click.BadParameter(
                f"{raw!r}: give SIGNAL=STRONG:WEAK, e.g. pdq=24:40.",
                param_hint="--threshold") from None
    return out


THRESHOLD = click.option(
    "--threshold", "thresholds", multiple=True, metavar="SIGNAL=STRONG:WEAK",
    help="Tighter perceptual thresholds for this bank's hashes (pdq, phash), at most the "
         "registry's; repeatable.")


def _show(bank: Bank, as_json: bool, what: str) -> None:
    if as_json:
        emit_json({"name": bank.name, "kind": bank.kind.value, "enabled": bank.enabled,
                   "description": bank.description, "thresholds": bank.thresholds_json(),
                   "source": bank.source})
        return
    limits = ", ".join(f"{k}={s}:{w}" for k, (s, w) in bank.thresholds_json().items())
    click.echo(f"Bank '{bank.name}' {what} ({bank.kind.value}, "
               f"{'enabled' if bank.enabled else 'disabled'}"
               f"{'; thresholds ' + limits if limits else ''}).")


@bank.command("add")
@click.argument("name")
@click.option("--description", default="", help="Where its hashes come from.")
@THRESHOLD
@json_option()
@click.pass_obj
def bank_add(ctx: Context, name: str, description: str, thresholds: tuple[str, ...],
             as_json: bool) -> None:
    """Create bank NAME for an imported list (audited); 'takedown import' creates one too."""
    bank_ = ctx.registry(load_index=False).add_bank(name, description, _thresholds(thresholds))
    _show(bank_, as_json, "added")


@bank.command("disable")
@click.argument("name")
@json_option()
@click.pass_obj
def bank_disable(ctx: Context, name: str, as_json: bool) -> None:
    """Stop bank NAME's hashes matching, at once and everywhere (they stay registered; the
    feed still carries them: to take them back from mirrors, withdraw them). Audited."""
    _show(ctx.registry(load_index=False).configure_bank(name, enabled=False), as_json,
          "disabled")


@bank.command("enable")
@click.argument("name")
@json_option()
@click.pass_obj
def bank_enable(ctx: Context, name: str, as_json: bool) -> None:
    """Let bank NAME's hashes match again. Audited."""
    _show(ctx.registry(load_index=False).configure_bank(name, enabled=True), as_json,
          "enabled")


@bank.command("set")
@click.argument("name")
@THRESHOLD
@click.option("--default-thresholds", is_flag=True,
              help="Drop the bank's own thresholds: the registry's apply.")
@click.option("--description", default=None)
@json_option()
@click.pass_obj
def bank_set(ctx: Context, name: str, thresholds: tuple[str, ...], default_thresholds: bool,
             description: str | None, as_json: bool) -> None:
    """Change bank NAME's thresholds or description (audited)."""
    if thresholds and default_thresholds:
        raise click.UsageError("Give --threshold or --default-thresholds, not both.")
    limits = {} if default_thresholds else (_thresholds(thresholds) if thresholds else None)
    _show(ctx.registry(load_index=False).configure_bank(name, thresholds=limits,
                                                        description=description),
          as_json, "changed")


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="canary", show_default=True,
              help="Folder to write the canary images to.")
@json_option()
@click.pass_obj
def canary(ctx: Context, out: str, as_json: bool) -> None:
    """Write the benign canary images to OUT and register their hashes in the 'canary' bank
    (once), so platforms can test their integration: a canary must match, in bank 'canary'."""
    from registry.hashing.canary import COUNT, canary_image
    from registry.service import SubmittedImage
    from registry.service.banks import CANARY_BANK

    registry = ctx.registry()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written, new = [], []
    for n in range(COUNT):
        data = canary_image(n)
        path = folder / f"takedown-canary-{n + 1}.png"
        path.write_bytes(data)
        written.append(str(path))
        image = registry.hash_image(data, registration=True)
        (known,) = registry.match([Query(path.name, (image.sha256,))])
        if not any(m.bank == CANARY_BANK and m.tier is Tier.EXACT for m in known.matches):
            new.append(SubmittedImage.from_image(image))
    registered = registry.register_bank(CANARY_BANK, BankKind.CANARY, new) if new else 0
    if as_json:
        emit_json({"files": written, "registered_images": len(new), "signals": registered})
    else:
        click.echo(f"Wrote {len(written)} canary images to {folder}/; registered "
                   f"{len(new)} new ({registered} signals) in bank '{CANARY_BANK}'.")


@click.group()
def benign() -> None:
    """The benign bank: common images whose copies must never be matched."""


@benign.command("add")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@json_option()
@click.pass_obj
def benign_add(ctx: Context, files: tuple[str, ...], as_json: bool) -> None:
    """Register FILES (pictures that caused false matches: a meme, a stock photo) in the
    benign bank (audited): a query whose whole-picture hashes match one strongly gets no
    whole-picture matches. Local matches stand; benign hashes are left out of the feed."""
    from registry.service import SubmittedImage
    from registry.service.banks import BENIGN_BANK

    registry = ctx.registry(load_index=False)
    images = []
    for name in files:
        image = SubmittedImage.from_image(
            registry.hash_image(Path(name).read_bytes(), registration=True))
        images.append(SubmittedImage(tuple(s for s in image.signals if not s.kind.is_local),
                                     image.pdq_quality, image.views))
    registered = registry.register_bank(BENIGN_BANK, BankKind.BENIGN, images)
    if as_json:
        emit_json({"bank": BENIGN_BANK, "images": len(images), "signals": registered})
    else:
        click.echo(f"Registered {len(images)} image(s) ({registered} signals) in bank "
                   f"'{BENIGN_BANK}'.")


@click.group()
def quarantine() -> None:
    """Hashes out of matching for review after 'not_violating' feedback from several
    platforms, and the queue of reported ones."""


@quarantine.command("list")
@click.option("--reported", is_flag=True,
              help="Active hashes with 'not_violating' reports since their last review instead.")
@json_option(JSON_LINES)
@click.pass_obj
def list_cmd(ctx: Context, reported: bool, as_json: bool) -> None:
    """Quarantined (or, with --reported, reported) hashes, with their bank, case and feedback
    since their last review (not_violating counts platforms, removed counts matches)."""
    registry = ctx.registry(load_index=False)
    for s in registry.reported() if reported else registry.quarantined():
        record = {"id": s.id, "signal": s.signal.kind.value, "bank": s.bank,
                  "case": s.case_number, "view": s.label, "removed": s.removed,
                  "not_violating": s.not_violating}
        if as_json:
            emit_json(record)
        else:
            click.echo("\t".join(f"{k}={v}" for k, v in record.items()))


@quarantine.command("hold")
@click.argument("signal_id", type=int)
@click.pass_obj
def hold(ctx: Context, signal_id: int) -> None:
    """Quarantine active hash SIGNAL_ID by your own decision (audited): it stops matching."""
    ctx.registry(load_index=False).hold_signal(signal_id)
    click.echo(f"Signal {signal_id} is quarantined.")


@quarantine.command("release")
@click.argument("signal_id", type=int)
@click.pass_obj
def release(ctx: Context, signal_id: int) -> None:
    """Put quarantined hash SIGNAL_ID back into matching (audited); the reports before this
    review stop counting towards another quarantine."""
    ctx.registry(load_index=False).release_signal(signal_id)
    click.echo(f"Signal {signal_id} is active again.")
