"""The real-runtime tier: rendered pods run in podman/runc as a kubelet would (tests/helpers/kubelet.py,
stackworld.py).

Needs what `bash scripts/setup-runtime.sh` installs (podman, runc, the local stand-in images); CI runs it. Without
them the tier is skipped here, saying so, except under CI (CI=true), where a missing runtime is a failure: the
tier must never pass by not running.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest

from tests.helpers.kubelet import PODMAN
from tests.helpers.stackworld import CLI_IMAGE, REDIS_IMAGE, ROOT

pytestmark = pytest.mark.runtime


def _unavailable(reason: str) -> None:
    message = f"real-runtime tier: {reason}; run `bash scripts/setup-runtime.sh` (as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def cli_image() -> str:
    """The CLI image, rebuilt from the current sources (podman's layer cache makes an unchanged tree instant)."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        _unavailable("podman or runc is not installed")
    for image in (REDIS_IMAGE,):
        if subprocess.run([*PODMAN, "image", "exists", image]).returncode != 0:
            _unavailable(f"the stand-in image {image} does not exist")
    proc = subprocess.run(["bash", str(ROOT / "scripts/setup-runtime.sh"), "--cli-image"], capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"building the CLI image failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return CLI_IMAGE


@pytest.fixture(scope="session")
def run_prefix() -> str:
    """Every container and network of this test run is named with it (so teardown removes exactly those)."""
    return f"cfrt-{secrets.token_hex(3)}"
