"""Keeps the minio SDK's admin-API cryptography out of processes that never call it.

``import minio`` imports ``minio.minioadmin`` (the MinIO admin API), which imports
``minio.crypto`` for the admin API's payload encryption, and with it argon2-cffi (whose cffi
parses C declarations with pycparser at import) and pycryptodome: about 15 % of a
sidecar's start-up CPU and 3 MiB of its memory, in every pod, for two functions this
project never calls (bench: podcost). Importing this module, which
:mod:`runlog_relay.objectstore` does just before it imports minio, puts a stand-in
``minio.crypto`` in ``sys.modules`` whose ``encrypt`` and ``decrypt`` import the real
module on first call, so ``MinioAdmin`` keeps working in a process that does use it.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

__all__ = ["install"]

_NAME = "minio.crypto"
_lock = threading.Lock()


class _StandIn(types.ModuleType):
    """``minio.crypto`` until one of its functions is called."""


def _real() -> types.ModuleType:
    with _lock:
        module = sys.modules.get(_NAME)
        if module is None or isinstance(module, _StandIn):
            sys.modules.pop(_NAME, None)
            module = importlib.import_module(_NAME)
        return module


def encrypt(*args: Any, **kwargs: Any) -> Any:
    return _real().encrypt(*args, **kwargs)


def decrypt(*args: Any, **kwargs: Any) -> Any:
    return _real().decrypt(*args, **kwargs)


def install() -> None:
    """Before the first ``import minio``; a no-op once minio is imported."""
    if "minio" in sys.modules or _NAME in sys.modules:
        return
    stand_in = _StandIn(_NAME, __doc__)
    stand_in.encrypt = encrypt  # type: ignore[attr-defined]
    stand_in.decrypt = decrypt  # type: ignore[attr-defined]
    sys.modules[_NAME] = stand_in


install()
