"""Content as data: scripts (话术), materials, channels (渠道活码) and SOPs, plus loader/renderer/validator.

No Flask here: the service, the CLI (`sopbot check`) and the tests all use the same pure functions.
"""

from __future__ import annotations

from scripts_library.loader import (
    CONTENT_ROOT,
    Channel,
    LibraryError,
    Part,
    Problem,
    Script,
    ScriptLibrary,
    channel_snapshots,
    load_channels,
    load_library,
    load_scripts,
)
from scripts_library.render import (
    LinkContext,
    LinkRewriter,
    RenderedPart,
    RenderedScript,
    make_context,
    render_script,
)

__all__ = [
    "CONTENT_ROOT",
    "Channel",
    "LibraryError",
    "LinkContext",
    "LinkRewriter",
    "Part",
    "Problem",
    "RenderedPart",
    "RenderedScript",
    "Script",
    "ScriptLibrary",
    "channel_snapshots",
    "load_channels",
    "load_library",
    "load_scripts",
    "make_context",
    "render_script",
]
