"""The Drive ``api_key`` never reaches an error or a log line, even when Drive's error message repeats it."""

from __future__ import annotations

import logging
import secrets
import traceback

import pytest
from pragma_core.testing.secrets import assert_no_secret, leaked_forms

from pragma_repo_clonezilla.drive import DriveClient, DriveError
from pragma_repo_clonezilla.settings import ClonezillaSettings

SHAPES = ("AIza{}-_Key", "key/with+{}=and%20percent", "AIzaSy{}~.Key")  # no blanks: to_token refuses them


@pytest.mark.parametrize("shape", SHAPES)
def test_a_drive_error_repeating_the_api_key_is_masked(shape: str, drive_sim, caplog) -> None:
    """Settings built by a program (not read from a file) still register their key."""
    api_key = shape.format(secrets.token_hex(6))
    drive_sim.api_key = "the-right-key-0123456789"
    drive_sim.echo_keys = True
    settings = ClonezillaSettings(api_key=api_key, drive_api_url=f"{drive_sim.url}/drive/v3", retry_delay=0, timeout=5)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DriveError) as info:
        DriveClient(settings, progress=False).list_folder(drive_sim.root)
    assert "keyInvalid" in str(info.value)
    text = str(info.value) + "".join(traceback.format_exception(info.value)) + caplog.text
    assert_no_secret(text, api_key, where="Drive error")


def test_the_simulated_drive_does_repeat_the_key(drive_sim) -> None:
    """Unmasked, the simulator's answer holds the key in several forms."""
    import requests

    drive_sim.api_key = "the-right-key-0123456789"
    drive_sim.echo_keys = True
    key = "key/with+sl=a sh"
    body = requests.get(f"{drive_sim.url}/drive/v3/files", headers={"X-Goog-Api-Key": key}, timeout=5).json()
    assert {"raw", "url", "url-plus"} <= set(leaked_forms(body["error"]["message"], key))
