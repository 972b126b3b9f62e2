"""What the commands that do not boot leave unimported: their start-up is part of every clean and listing."""

from __future__ import annotations

import json
import subprocess
import sys

BOOT_ONLY = ("pragma_kvm_rocks.disks", "pragma_kvm_rocks.e2fs", "pragma_kvm_rocks.deploy",
             "pragma_core.imagecheck", "pragma_core.http")


def _imported_by(code: str) -> set[str]:
    probe = f"import sys\n{code}\nimport json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def test_the_modules_of_clean_import_no_disk_builder_image_check_or_http_client() -> None:
    loaded = _imported_by("import pragma_kvm_rocks.driver, pragma_kvm_rocks.teardown, pragma_kvm_rocks.storage")
    assert not loaded & set(BOOT_ONLY), sorted(loaded & set(BOOT_ONLY))

