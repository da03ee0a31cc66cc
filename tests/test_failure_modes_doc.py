"""docs/failure-modes.md is generated from the tests' ``failure_mode`` marks and must be current."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_failure_modes_doc_is_current():
    done = subprocess.run([sys.executable, "scripts/failure_modes.py", "--check"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_marks_need_a_kind_what_the_user_sees_and_what_is_kept(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import failure_modes
    finally:
        sys.path.pop(0)
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\n@pytest.mark.failure_mode('bad row', sees='skipped, counted', kept='the other rows')\n"
        "@pytest.mark.failure_mode('bad file', sees='error naming it', kept='nothing written')\n"
        "def test_a():\n    pass\n")
    modes = failure_modes.collect(tmp_path)
    assert [(m.kind, m.kept) for m in modes] == [("bad file", "nothing written"), ("bad row", "the other rows")]
    assert "| 1 | bad file | error naming it | nothing written |" in failure_modes.render(modes)
    (tmp_path / "test_x.py").write_text("import pytest\n\n@pytest.mark.failure_mode('bad row')\ndef test_a():\n"
                                        "    pass\n")
    try:
        failure_modes.collect(tmp_path)
    except SystemExit as err:
        assert "needs a literal kind, sees= and kept=" in str(err)
    else:
        raise AssertionError("a mark without sees/kept was accepted")
