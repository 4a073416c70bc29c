"""deploy/kafka/kafka.sh's cluster id: never readable as an option by ``kafka-storage``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "kafka.sh"
VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{21}$")


def bash(snippet: str) -> list[str]:
    out = subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"; {snippet}'],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.split()


def test_cluster_ids_never_begin_with_a_dash() -> None:
    # a leading "-" came up once in 64 starts: 400 draws would show ~6 of them
    ids = bash("for i in $(seq 400); do cluster_id; done")
    assert len(ids) == 400
    assert all(VALID.match(i) for i in ids), [i for i in ids if not VALID.match(i)]
    assert len(set(ids)) == 400
    assert any("-" in i for i in ids)  # the URL-safe alphabet is still used inside


def test_a_draw_that_begins_with_a_dash_is_drawn_again() -> None:
    # `head` gives bytes whose base64 begins with "+" (→ "-") on its first two calls, then
    # 16 fixed bytes (counted in a file: each call runs in a command substitution)
    fake_head = (
        'calls=$(mktemp); head() { local n=$(($(cat "$calls" || echo 0) + 1)); '
        'echo "$n" >"$calls"; if ((n <= 2)); then printf "\\xf8%.0s" {1..16}; '
        "else printf 0123456789abcdef; fi; }"
    )
    drawn = bash(f'{fake_head}; cluster_id; cat "$calls"; rm -f "$calls"')
    assert drawn == ["MDEyMzQ1Njc4OWFiY2RlZg", "3"]  # two draws refused, the third kept


def test_the_id_is_passed_in_the_form_argparse_never_reads_as_an_option() -> None:
    text = SCRIPT.read_text()
    assert '--cluster-id="$(cluster_id)"' in text
    assert " -t " not in text
