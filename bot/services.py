"""Services: what the web app and the workers share (settings, database, Redis, crypto, content).

Built once per process by `bot.create_app` or `jobs.worker.get_services`; no I/O at import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import redis
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from bot.config import Settings
from bot.db import dispose_if_forked, make_engine, make_session_factory
from bot.redis_conn import connect, resolve_redis_url
from bot.store import ChannelSnapshot
from bot.wecom.crypto import WeComCrypto

if TYPE_CHECKING:
    from bot.wecom.client import WeComClient

log = logging.getLogger(__name__)

__all__ = ["Services"]


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis_url: str
    crypto: WeComCrypto
    channels: dict[str, ChannelSnapshot] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        engine = make_engine(settings.database_url)
        redis_url = resolve_redis_url(settings.redis_url, settings.var_dir)
        crypto = WeComCrypto(settings.callback_token, settings.encoding_aes_key, settings.corp_id)
        services = cls(settings, engine, make_session_factory(engine), redis_url, crypto)
        services.channels = load_channels()
        return services

    @cached_property
    def redis(self) -> redis.Redis:
        return connect(self.redis_url)

    @cached_property
    def wecom(self) -> WeComClient:
        from bot.wecom.client import WeComClient

        s = self.settings
        return WeComClient(s.corp_id, s.agent_secret, self.redis, api_base=s.api_base, agent_id=s.agent_id,
                           rate_limits={"*": s.wecom_rate_limit})

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """One Core transaction (no ORM session): for the few hot paths that need no objects."""
        dispose_if_forked(self.engine)
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        dispose_if_forked(self.engine)
        with self.sessions() as session, session.begin():
            yield session


def load_channels() -> dict[str, ChannelSnapshot]:
    """Channel codes (渠道活码) from the scripts library; an empty map if the library has none."""
    try:
        from scripts_library import channel_snapshots
    except ImportError:
        return {}
    return channel_snapshots()
