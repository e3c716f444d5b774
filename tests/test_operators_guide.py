"""docs/operators.md is a guide whose commands work: every ``bash`` block in it runs, in order,
in one shell (``set -euo pipefail``) in a fresh folder, with the real ``takedown`` command; a
failing command fails the test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "operators.md"


def blocks() -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```$", GUIDE.read_text(), flags=re.S | re.M)


def test_the_guide_has_its_walk_through():
    script = "\n".join(blocks())
    for command in ("import", "export", "follow", "bank set", "bank disable", "case purge",
                    "audit verify", "stats"):
        assert "takedown --data-dir" in script and f" {command}" in script, command


def test_every_command_of_the_operators_guide_runs(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAKEDOWN_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    script = "set -euo pipefail\n" + "\n".join(blocks())
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert "Imported into bank 'ngo-a'" in done.stdout
    assert "hashes erased for good" in done.stdout
    assert "Audit chain intact" in done.stdout
