from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.tagging.service import reset_caches


@pytest.fixture
def rules_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Path]]:
    """Point the service at a rules directory of the test's own (instead of the content library)."""
    directory = tmp_path / "rules"
    directory.mkdir()
    monkeypatch.setenv("SOPBOT_TAGGING_RULES_DIR", str(directory))
    reset_caches()

    def write(yaml_text: str, name: str = "rules.yaml") -> Path:
        path = directory / name
        path.write_text(yaml_text, encoding="utf-8")
        reset_caches()
        return path

    yield write
    reset_caches()
