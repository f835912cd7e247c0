"""Volumes updated the way the kubelet updates mounted ConfigMaps and Secrets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class AtomicMount:
    """A directory updated the way the kubelet updates ConfigMap and Secret volumes
    (kubernetes/pkg/volume/util/atomic_writer.go): files live in a timestamped directory,
    ``..data`` points to it, the visible names are symlinks through ``..data``, and an
    update swaps ``..data`` with one rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._generation = 0

    def write(self, files: Mapping[str, str]) -> None:
        self._generation += 1
        payload = self.root / f"..2024_01_01_00_00_00.{self._generation:09d}"
        payload.mkdir()
        for name, content in files.items():
            (payload / name).write_text(content, encoding="utf-8")
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(payload.name)
        os.replace(tmp, data)  # the atomic swap
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                visible.symlink_to(Path("..data") / name)
        if old is not None:
            for child in (self.root / old).iterdir():
                child.unlink()
            (self.root / old).rmdir()

    def path(self, name: str) -> Path:
        return self.root / name
