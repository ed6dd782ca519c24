from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 backbone (from its registry package)."""
    from app.engine.backbone import load_backbone

    return load_backbone()
