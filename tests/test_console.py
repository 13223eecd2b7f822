"""A search's console switches: Ray's routine notes off by default, back with --verbose.

Each case runs in a fresh process: Ray is not imported into the test process (see
test_tune_state.py). The whole quiet console of a real search is tested in test_search.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import os, sys
from tsearch.search.console import configure_driver
configure_driver(sys.argv[1] == "verbose")
from ray._private.authentication import authentication_token_setup as auth
auth._warn_token_auth_enabled()   # what ray.init says when Ray was imported before init_ray
auth._warn_token_auth_disabled()  # a real security note: always shown
print("RAY_AIR_NEW_OUTPUT=" + os.environ["RAY_AIR_NEW_OUTPUT"])
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_token_note_and_tune_output_engine(mode):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    verbose = mode == "verbose"
    assert ("Token authentication is enabled" in proc.stderr) == verbose, proc.stderr
    assert "Token authentication is disabled" in proc.stderr
    # Tune's new output engine prints its experiment box at every verbosity; the old one at 0
    # prints nothing.
    assert f"RAY_AIR_NEW_OUTPUT={int(verbose)}" in proc.stdout
