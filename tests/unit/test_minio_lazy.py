"""The sidecar's import of minio leaves out the admin API's cryptography, and the admin
API still works when something calls it (runlog_relay._minio_lazy)."""

from __future__ import annotations

import subprocess
import sys

_CHECK = """
import io, sys
import runlog_relay.objectstore
heavy = [name for name in ("argon2", "Crypto", "cffi", "pycparser") if name in sys.modules]
assert not heavy, heavy
from minio.minioadmin import decrypt, encrypt
sealed = encrypt(b"payload", "password")
assert "argon2" in sys.modules and "Crypto" in sys.modules
class Response(io.BytesIO):  # what minio's admin client hands decrypt
    def release_conn(self): pass
assert decrypt(Response(sealed), "password") == b"payload"
print("ok")
"""


def test_objectstore_imports_minio_without_its_admin_cryptography() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
