"""The audit chain and its anchors: every kind of tampering is named by ``takedown audit
verify`` (an edited, deleted or reordered event breaks the chain; a cut-off tail or an emptied
table is caught by an anchor published before), and forged anchors are refused."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli.main import cli
from registry.bootstrap import build_registry
from registry.config import Settings
from registry.service import SubmittedImage
from registry.service.audit import Anchor, sign
from registry.web import create_app
from tests.conftest import FAST_KDF, encode, photo

KEY = "audit-test-secret"


@pytest.fixture
def reg(tmp_path):
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), pin_kdf_n=FAST_KDF,
                                 secret_key=KEY)
    registry = build_registry(settings)
    image = SubmittedImage.from_image(registry.hash_image(encode(photo(1), quality=90)))
    for _ in range(3):  # 3 submissions and 3 withdrawals: 6 events
        receipt = registry.submit_case([image])
        registry.withdraw_case(receipt.number, receipt.pin)
    yield registry
    registry.close()


def sql(registry, statement: str, **params: object) -> None:
    with registry._store.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_an_untouched_chain_verifies_with_its_anchors(reg):
    head = reg.audit_head()
    assert head is not None and head.id == 6 and head.signature == sign(KEY, 6, head.digest)
    reg.anchor_audit()
    report = reg.verify_audit([head])
    assert report.ok and report.events == 6 and report.anchors == 2  # given + saved


@pytest.mark.parametrize("tamper, broken_at", [
    ("UPDATE audit_events SET details = '{}' WHERE id = 3", 3),
    ("UPDATE audit_events SET actor = 'operator' WHERE id = 2", 2),
    ("DELETE FROM audit_events WHERE id = 4", 5),
    ("DELETE FROM audit_events WHERE id = 1", 2),
])
def test_edits_and_deletions_name_the_first_broken_link(reg, tamper, broken_at):
    sql(reg, tamper)
    report = reg.verify_audit()
    assert not report.ok and report.broken_at == broken_at


def test_reordered_events_are_caught(reg):
    with reg._store.engine.begin() as conn:
        rows = {r.id: r for r in conn.execute(text("SELECT * FROM audit_events"))}
        for a, b in ((2, 3), (3, 2)):  # swap the contents of events 2 and 3
            r = rows[b]
            conn.execute(text("UPDATE audit_events SET at = :at, actor = :actor, action = "
                              ":action, subject = :subject, details = :details, digest = "
                              ":digest WHERE id = :id"),
                         {"at": r.at, "actor": r.actor, "action": r.action,
                          "subject": r.subject, "details": r.details, "digest": r.digest,
                          "id": a})
    assert reg.verify_audit().broken_at == 2


def test_a_cut_tail_and_an_emptied_table_are_caught_by_anchors(reg):
    reg.anchor_audit()  # the serving process saved the head (6)
    published = reg.audit_head()
    sql(reg, "DELETE FROM audit_events WHERE id > 4")
    # The rest is a valid chain on its own...
    assert reg.verify_audit(saved=False).ok
    # ...but the head published before is gone.
    cut = reg.verify_audit([published], saved=False)
    assert not cut.ok and cut.broken_at is None
    assert "event 6" in cut.problems[0] and "the newest is 4" in cut.problems[0]
    assert not reg.verify_audit().ok  # the saved anchor alone shows it too
    sql(reg, "DELETE FROM audit_events")
    emptied = reg.verify_audit()
    assert not emptied.ok and "the audit log is empty" in emptied.problems[0]


def test_a_forged_anchor_or_a_changed_digest_is_reported(reg):
    head = reg.audit_head()
    assert head is not None
    forged = Anchor(head.id, "0" * 64, "f" * 64)
    assert "signature" in reg.verify_audit([forged], saved=False).problems[0]
    unsigned = Anchor(head.id, "0" * 64)
    assert "another digest" in reg.verify_audit([unsigned], saved=False).problems[0]


def test_readyz_publishes_the_signed_head(reg):
    response = create_app(reg).test_client().get("/readyz")
    head = response.get_json()["audit_head"]
    assert head["id"] >= 6 and head["signature"] == sign(KEY, head["id"], head["digest"])


def test_the_cli_verifies_and_exits_1_when_broken(reg, tmp_path, monkeypatch):
    monkeypatch.setenv("TAKEDOWN_DATA_DIR", reg.settings.data_dir)
    monkeypatch.setenv("TAKEDOWN_SECRET_KEY", KEY)
    monkeypatch.delenv("TAKEDOWN_DATABASE_URL", raising=False)
    runner = CliRunner()
    anchors = tmp_path / "kept.jsonl"
    kept = runner.invoke(cli, ["audit", "anchor", "--out", str(anchors)])
    assert kept.exit_code == 0, kept.output
    assert json.loads(anchors.read_text())["id"] == json.loads(kept.output)["id"]
    ok = runner.invoke(cli, ["audit", "verify", "--anchors", str(anchors)])
    assert ok.exit_code == 0 and "intact" in ok.output
    sql(reg, "DELETE FROM audit_events WHERE id > 3")
    cut = runner.invoke(cli, ["audit", "verify", "--anchors", str(anchors), "--json"])
    assert cut.exit_code == 1 and json.loads(cut.output)["ok"] is False
    head = runner.invoke(cli, ["audit", "verify", "--head", "2:" + "a" * 64])
    assert head.exit_code == 1 and "another digest" in head.stderr
    bad = runner.invoke(cli, ["audit", "verify", "--head", "nonsense"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_audit_show_lists_a_cases_events_and_matches_and_a_platforms_actions(
        reg, monkeypatch, tmp_path):
    from registry.domain import Query, Scope

    image = SubmittedImage.from_image(reg.hash_image(encode(photo(2), quality=90)))
    receipt = reg.submit_case([image])
    platform, _ = reg.add_platform("clips", [Scope.MATCH])
    other, _ = reg.add_platform("other", [Scope.MATCH])
    pdq = next(s for s in image.signals if s.kind.value == "pdq")
    (result,) = reg.match([Query("upload-7", (pdq,))], platform=platform)
    assert result.matched
    reg.record_feedback(platform, result.matches[0].match_id, "removed")
    reg.match([Query("u", (pdq,))], platform=other)

    monkeypatch.setenv("TAKEDOWN_DATA_DIR", reg.settings.data_dir)
    monkeypatch.delenv("TAKEDOWN_DATABASE_URL", raising=False)
    runner = CliRunner()
    by_case = runner.invoke(cli, ["audit", "show", "--case", receipt.number, "--json"])
    assert by_case.exit_code == 0, by_case.output
    trail = json.loads(by_case.output)
    assert [e["action"] for e in trail["events"]] == ["case_submitted"]
    assert {m["platform"] for m in trail["matches"]} == {"clips", "other"}
    clips = next(m for m in trail["matches"] if m["platform"] == "clips")
    assert clips["feedback"] == ["removed"] and clips["signal"] == "pdq"
    assert pdq.hex not in by_case.output  # the trail names matches, never hash values

    by_platform = runner.invoke(cli, ["audit", "show", "--platform", "clips", "--json"])
    actions = [e["action"] for e in json.loads(by_platform.output)["events"]]
    assert actions == ["feedback", "match", "platform_added"]  # newest first
    text_out = runner.invoke(cli, ["audit", "show", "--case", receipt.number])
    assert text_out.exit_code == 0 and "case_submitted" in text_out.output
    assert "clips" in text_out.output and "removed" in text_out.output

    everything = runner.invoke(cli, ["audit", "show", "--limit", "3", "--json"])
    assert len(json.loads(everything.output)["events"]) == 3
    for args in (["--case", "K-0000-0000-0000"], ["--platform", "nobody"],
                 ["--case", receipt.number, "--platform", "clips"]):
        refused = runner.invoke(cli, ["audit", "show", *args])
        assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    assert runner.invoke(cli, ["audit", "show", "--limit", "0"]).exit_code == 2
