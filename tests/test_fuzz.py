"""A bounded run of the decoder fuzzer (tests/fuzz/decode.py) in ``make test``: libFuzzer's
limit makes a hang over 2 s a failure, the harness one input taking over 512 MB more memory,
and any exception that is not an ImageError. bench/fuzz.py runs the same harness for long."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.decode import seeds, target

ROOT = Path(__file__).resolve().parent.parent
SECONDS = int(os.environ.get("FUZZ_SECONDS", "40"))


def test_every_seed_is_a_valid_image_of_its_kind():
    made = seeds()
    assert len(made) >= 50
    for name, data in made.items():
        target(data)  # hashes, or refuses with an ImageError
        assert data[:2] == b"\xff\xd8" or not name.endswith(".jpeg"), name


@pytest.mark.slow
def test_decoder_fuzzing_finds_nothing(tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.decode", str(corpus), "--seeds", str(corpus),
         f"-max_total_time={SECONDS}", "-timeout=2", "-rss_limit_mb=3072",
         f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120)
    artifacts = sorted(p.name for p in tmp_path.iterdir() if p.name != "corpus")
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr)
    assert proc.returncode == 0 and not artifacts, (artifacts, proc.stderr[-3000:])
    assert runs and int(runs.group(1)) > 500, proc.stderr[-2000:]


def test_the_harness_fails_an_input_that_takes_too_much_memory():
    # In a fresh process (this one's allocator already holds what hashing needs): a 1100 x
    # 1030 JPEG takes tens of MB while it is hashed, within 512 MB, over a 1 MB limit.
    code = "import tests.fuzz.decode as h; h.bounded(h.seeds()['big-draft.jpeg'])"
    fresh = ("import tests.fuzz.decode as h; h.INPUT_MB = 1\n"
             "try:\n    h.bounded(h.seeds()['big-draft.jpeg'])\n"
             "except MemoryError as e:\n    print('refused', e)\n")
    within = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert within.returncode == 0, within.stderr[-2000:]
    over = subprocess.run([sys.executable, "-c", fresh], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert over.returncode == 0 and "refused one input took" in over.stdout, over.stderr[-2000:]
