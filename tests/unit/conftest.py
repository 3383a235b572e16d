"""Unit tests keep the controller's state (CA, generated passwords) in a temporary directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def pki_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PYINFRA_SWARM_PKI_DIR", str(tmp_path / "pki"))
    return tmp_path / "pki"
