"""The list commands at the command line: ``import`` on every sample file (good ones import,
broken ones import nothing and exit 1 naming the line), ``export`` round trips, ``bank`` policy
commands, and usage errors exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.config import Settings
from registry.errors import ConfigError

DATA = Path(__file__).resolve().parent / "data" / "interop"
GOOD = {"good.csv": "csv", "good.hma.jsonl": "hma", "good.stopncii.json": "stopncii",
        "good.threatexchange.jsonl": "threatexchange"}
BROKEN = {"bad-hex.csv": "csv", "truncated.csv": "csv", "wrong-columns.csv": "csv",
          "missing-column.csv": "csv", "bad-hex.hma.jsonl": "hma",
          "truncated.hma.jsonl": "hma", "bad-hex.stopncii.jsonl": "stopncii",
          "truncated.stopncii.json": "stopncii", "not-json.stopncii.json": "stopncii",
          "bad-hex.threatexchange.jsonl": "threatexchange",
          "truncated.threatexchange.json": "threatexchange"}


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("TAKEDOWN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TAKEDOWN_DATABASE_URL", raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def banks(run) -> dict[str, dict]:
    return {b["name"]: b for b in json.loads(run("bank", "list", "--json").output)}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_a_good_file_imports_once_and_exports_back(run, tmp_path, name):
    fmt = GOOD[name]
    first = run("import", str(DATA / name), "--format", fmt, "--bank", "src", "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["applied"] and report["added"] > 0 and report["errors"] == 0
    again = json.loads(run("import", str(DATA / name), "--format", fmt, "--bank", "src",
                           "--json").output)
    assert again["added"] == 0 and again["withdrawn"] == 0
    out = tmp_path / f"out.{fmt}"
    exported = run("export", "--bank", "src", "--format", fmt, "--out", str(out), "--json")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.output)["records"] > 0
    copy = json.loads(run("import", str(out), "--format", fmt, "--bank", "copy",
                          "--json").output)
    assert copy["added"] == report["added"] - report["withdrawn"]
    assert banks(run)["copy"]["signals"].get("active") == \
        banks(run)["src"]["signals"].get("active")


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_file_imports_nothing_and_exits_1(run, name):
    result = run("import", str(DATA / name), "--format", BROKEN[name], "--bank", "src")
    assert result.exit_code == 1, result.output
    assert "line" in result.output or f"{name}:" in result.output, result.output
    assert "Traceback" not in result.output
    assert "src" not in banks(run)


def test_usage_errors_exit_2_and_failures_exit_1(run):
    assert run("import", str(DATA / "good.csv"), "--format", "nope", "--bank", "x"
               ).exit_code == 2
    assert run("import", str(DATA / "good.csv"), "--format", "csv").exit_code == 2
    assert run("bank", "add", "b", "--threshold", "pdq=x").exit_code == 2
    assert run("import", "/nonexistent.csv", "--format", "csv", "--bank", "x").exit_code == 1
    assert run("export", "--bank", "missing", "--format", "csv").exit_code == 1
    assert run("bank", "disable", "missing").exit_code == 1
    assert run("bank", "add", "b", "--threshold", "pdq=40:50").exit_code == 1  # looser


def test_bank_commands_change_the_policy_bank_list_shows(run):
    added = run("bank", "add", "ngo", "--description", "NGO list", "--threshold", "pdq=20:30",
                "--json")
    assert added.exit_code == 0 and json.loads(added.output)["thresholds"] == {
        "pdq": [20, 30]}
    assert run("bank", "add", "ngo").exit_code == 1  # exists
    assert run("bank", "disable", "ngo").exit_code == 0
    assert banks(run)["ngo"]["enabled"] is False
    assert run("bank", "enable", "ngo").exit_code == 0
    assert run("bank", "set", "ngo", "--default-thresholds").exit_code == 0
    listed = banks(run)["ngo"]
    assert listed["enabled"] is True and listed["thresholds"] == {}
    assert "ngo (imported)" in run("bank", "list").output


def test_upstream_settings_are_checked():
    with pytest.raises(ConfigError, match="UPSTREAM"):
        Settings.from_env({"TAKEDOWN_UPSTREAM_URL": "http://example.org"})
    with pytest.raises(ConfigError, match="UPSTREAM"):
        Settings.from_env({"TAKEDOWN_UPSTREAM_URL": "ftp://x", "TAKEDOWN_UPSTREAM_KEY": "k",
                           "TAKEDOWN_UPSTREAM_BANK": "b"})
    ok = Settings.from_env({"TAKEDOWN_UPSTREAM_URL": "https://x", "TAKEDOWN_UPSTREAM_KEY": "k",
                            "TAKEDOWN_UPSTREAM_BANK": "b"})
    assert ok.upstream_bank == "b"
