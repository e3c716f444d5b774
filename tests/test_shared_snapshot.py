"""One index per machine: serving processes map the same snapshot file, one of them compacts by
writing a new one, the others switch to it while they keep answering, and a bad new file is
refused while the old tables go on serving.

The worker processes here are real processes (``python -c`` children building the registry as
``registry.web.wsgi`` does) on one SQLite database; tests/test_production.py runs gunicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from registry.bootstrap import SNAPSHOT_NAME, build_registry
from registry.config import Settings
from registry.domain import BankKind, Query, SignalKind
from registry.index import MultiIndex
from registry.service import Registry
from tests.conftest import pdq_images, wait_until

ROOT = Path(__file__).resolve().parent.parent

# A serving process: build the registry, follow the log, and answer the same queries (codes
# registered before it started) over and over until told to stop, reporting what it saw.
WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from registry.bootstrap import build_registry
    from registry.config import Settings
    from registry.domain import Query, Signal, SignalKind
    from registry.index import MultiIndex

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    codes = [bytes.fromhex(h) for h in json.loads((data / "probe.json").read_text())]
    settings = Settings.from_env({}, data_dir=str(data), pin_kdf_n=1024, follow_poll_s=0.05)
    registry = build_registry(settings)
    registry.follow_changes()
    snap = str(registry._keeper.snapshot_path)
    queries = [Query(str(i), (Signal(SignalKind.PDQ, c),)) for i, c in enumerate(codes)]
    rounds = misses = 0
    while not (data / "stop").exists():
        for result in registry.match(queries):
            if not any(m.distance == 0 for m in result.matches):
                misses += 1
        rounds += 1
        index = registry._keeper.indexes.indexes[SignalKind.PDQ]
        maps = sorted({line.split()[4] + (" deleted" if "(deleted)" in line else "")
                       for line in open("/proc/self/maps") if snap in line})
        status = {"pid": os.getpid(), "rounds": rounds, "misses": misses,
                  "adopted": registry._keeper.adopted, "mapped": bool(index.mapped),
                  "base": index.stats["base"], "delta": index.stats["delta"],
                  "loaded_from": registry._keeper.loaded_from, "maps": maps}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, out)
        time.sleep(0.02)
    registry.close()
""")


def status(path: Path) -> dict[str, object]:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, data_dir=str(tmp_path / "data"), pin_kdf_n=1024,
                             follow_poll_s=0.05)


def test_workers_share_one_mapped_snapshot_and_switch_when_another_compacts(
        settings: Settings, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    first = pdq_images(rng, 3000)
    writer = build_registry(settings)  # migrates, rebuilds, writes and maps the first snapshot
    try:
        writer.register_bank("victims", BankKind.IMPORTED, first)
        writer.rebuild_index()
        data = Path(settings.data_dir)
        probe = [s.signals[0].value.hex() for s in first[::30]]
        (data / "probe.json").write_text(json.dumps(probe))
        outs = [tmp_path / f"worker-{i}.json" for i in range(2)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(data), str(o)], env=env,
                                    cwd=ROOT, stderr=subprocess.PIPE, text=True)
                   for o in outs]
        try:
            wait_until(lambda: all(status(o).get("rounds", 0) for o in outs), timeout=60,
                       what="workers")
            before = [status(o) for o in outs]
            assert all(b["loaded_from"] == "snapshot" and b["mapped"] for b in before)
            # Both map the same file (same inode), read-only and shared.
            assert before[0]["maps"] == before[1]["maps"] and len(before[0]["maps"]) == 1
            # Past the delta's bound: one worker's follower writes a new snapshot, both map it.
            writer.register_bank("victims", BankKind.IMPORTED, pdq_images(rng, 5000))
            wait_until(lambda: all(status(o).get("adopted", 0) >= 1
                                 and status(o).get("delta", -1) < 1000 for o in outs),
                     timeout=60, what="both workers to switch to the compacted snapshot")
            wait_until(lambda: all(int(status(o)["rounds"]) > 5 + int(b["rounds"])  # type: ignore[call-overload]
                                 for o, b in zip(outs, before, strict=True)),
                     timeout=60, what="more rounds")
            after = [status(o) for o in outs]
            for a in after:
                assert a["misses"] == 0, a  # every probe matched, before, during and after
                assert a["mapped"] and int(a["base"]) >= 8000 - 1000  # type: ignore[call-overload]
            live = [[m for m in a["maps"] if "deleted" not in m] for a in after]  # type: ignore[attr-defined]
            assert live[0] == live[1] and len(live[0]) == 1
            assert live[0] != before[0]["maps"]  # a new file (inode), not the first one
        finally:
            (data / "stop").touch()
            for w in workers:
                try:
                    _, err = w.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    w.kill()
                    _, err = w.communicate()
                assert w.returncode == 0, err[-3000:]
    finally:
        writer.close()


def _head(registry: Registry) -> int:
    with registry._store.transaction(write=False) as tx:
        return int(tx.changes.head())


def test_the_process_that_compacts_serves_from_the_file_it_wrote(settings: Settings) -> None:
    registry = build_registry(settings)
    try:
        follower = registry.follow_changes()
        rng = np.random.default_rng(12)
        images = pdq_images(rng, 5000)  # past the delta's 4096 bound
        registry.register_bank("bulk", BankKind.IMPORTED, images)
        # The follower's round that reaches the bank's last change compacts by writing a
        # snapshot and maps it, before it ends.
        assert follower.wait_synced(_head(registry), timeout=60)
        assert registry._keeper.adopted >= 1
        index = registry._keeper.indexes.indexes[SignalKind.PDQ]
        assert isinstance(index, MultiIndex) and index.mapped
        assert index.stats["base"] == 5000 and index.stats["delta"] == 0
        assert follower.status.errors == 0
        assert registry.verify_index().ok
        (result,) = registry.match([Query("q", (images[77].signals[0],))])
        assert result.matched and result.matches[0].distance == 0
    finally:
        registry.close()


def test_a_corrupt_new_snapshot_is_refused_and_the_old_tables_go_on_serving(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    registry = build_registry(settings)
    other = build_registry(settings, load_index=False)
    try:
        rng = np.random.default_rng(13)
        images = pdq_images(rng, 50)
        registry.register_bank("b", BankKind.IMPORTED, images)
        registry._keeper.sync()
        path = registry._keeper.snapshot_path
        # Another process writes a snapshot that is then damaged on disk.
        other._keeper.load()
        other._keeper.save_snapshot()
        raw = bytearray(path.read_bytes())
        raw[len(raw) - 5] ^= 0x40
        tmp = path.with_name("damaged")
        tmp.write_bytes(bytes(raw))
        os.replace(tmp, path)
        with caplog.at_level("WARNING", logger="registry.service.indexing"):
            assert registry._keeper.adopt_snapshot() is False
        assert "not switching to the new snapshot" in caplog.text and "checksum" in caplog.text
        assert registry._keeper.adopt_snapshot() is False  # refused once, not re-read each time
        (result,) = registry.match([Query("q", (images[3].signals[0],))])
        assert result.matched
        assert registry.verify_index().ok
    finally:
        other.close()
        registry.close()
    # On the next start the damaged file is refused and the index rebuilt from the database.
    restarted = build_registry(settings)
    try:
        assert restarted._keeper.loaded_from == "database" and restarted.verify_index().ok
        assert restarted._keeper.indexes.indexes[SignalKind.PDQ].mapped  # and the new one shared
    finally:
        restarted.close()


@pytest.mark.parametrize("damage", ["foreign", "truncated"])
def test_a_foreign_or_truncated_snapshot_is_rebuilt_from_the_database(
        settings: Settings, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    registry = build_registry(settings)
    try:
        registry.register_bank("b", BankKind.IMPORTED, pdq_images(np.random.default_rng(14), 40))
        registry.rebuild_index()
    finally:
        registry.close()
    path = settings.snapshot_dir / SNAPSHOT_NAME
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:  # another registry's snapshot: a different database history
        elsewhere = replace(settings, data_dir=str(tmp_path / "elsewhere"))
        foreign = build_registry(elsewhere)
        try:
            foreign.register_bank("x", BankKind.IMPORTED,
                                  pdq_images(np.random.default_rng(15), 60))
            foreign.rebuild_index()
        finally:
            foreign.close()
        os.replace(elsewhere.snapshot_dir / SNAPSHOT_NAME, path)
    with caplog.at_level("INFO", logger="registry.service.indexing"):
        restarted = build_registry(settings)
    try:
        assert restarted._keeper.loaded_from == "database"
        assert "rebuilding from the database" in caplog.text
        assert ("not the database's" in caplog.text or "newer than" in caplog.text
                if damage == "foreign" else "corrupt" in caplog.text)
        assert restarted.verify_index().ok
        assert len(restarted._keeper.indexes.indexes[SignalKind.PDQ]) == 40
    finally:
        restarted.close()


def test_without_a_usable_snapshot_folder_a_process_compacts_in_its_own_memory(
        settings: Settings) -> None:
    folder = Path(settings.snapshot_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("not a folder")  # the snapshot folder cannot be made: no lock, no file
    registry = build_registry(settings)
    try:
        assert registry._keeper.loaded_from == "database"
        follower = registry.follow_changes()
        images = pdq_images(np.random.default_rng(16), 5000)  # past the delta's 4096 bound
        registry.register_bank("bulk", BankKind.IMPORTED, images)
        index = registry._keeper.indexes.indexes[SignalKind.PDQ]
        assert isinstance(index, MultiIndex)
        # No snapshot can be written: the round compacts in this process' memory instead.
        assert follower.wait_synced(_head(registry), timeout=60)
        assert index.stats["delta"] == 0 and index.stats["base"] == 5000
        assert not index.mapped and follower.status.running
        (result,) = registry.match([Query("q", (images[9].signals[0],))])
        assert result.matched
    finally:
        registry.close()
