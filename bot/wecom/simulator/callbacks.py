"""Encrypted callbacks the fake WeCom pushes to sopbot (回调通知 / 接收事件服务器).

Element names, CDATA placement and ordering follow the decrypted samples of PROTOCOL.md §2
(客户变更 change_external_contact, 客户群变更 change_external_chat, 企业客户标签变更
change_external_tag, 通讯录变更 change_contact, 微信客服 kf_msg_or_event, 会话存档
msgaudit_notify, 应用消息 text). Strings go in CDATA, integers bare — as WeCom sends them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import requests

from bot.wecom.crypto import EncryptedEnvelope, WeComCrypto

__all__ = [
    "CallbackEmitter",
    "render_xml",
    "change_external_contact",
    "change_external_chat",
    "change_external_tag",
    "change_contact",
    "kf_msg_or_event",
    "msgaudit_notify",
    "text_message",
]

log = logging.getLogger(__name__)

XmlValue = str | int | list[str] | None
PostHook = Callable[[str, dict[str, str], bytes], Any]


def _cdata(text: str) -> str:
    # "]]>" cannot live inside one CDATA section; split it across two.
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render_xml(fields: Iterable[tuple[str, XmlValue]]) -> str:
    """<xml> with one element per field; None is omitted, lists become <Item> children."""
    parts = ["<xml>"]
    for name, value in fields:
        if value is None:
            continue
        if isinstance(value, bool):  # bool is an int; WeCom never sends booleans
            raise TypeError(f"{name}: booleans are not WeCom XML values")
        if isinstance(value, int):
            parts.append(f"<{name}>{value}</{name}>")
        elif isinstance(value, list):
            items = "".join(f"<Item>{_cdata(v)}</Item>" for v in value)
            parts.append(f"<{name}>{items}</{name}>")
        else:
            parts.append(f"<{name}>{_cdata(value)}</{name}>")
    parts.append("</xml>")
    return "".join(parts)


def _event(
    corp_id: str, create_time: int, event: str, *, sys_sender: bool = True
) -> list[tuple[str, XmlValue]]:
    return [
        ("ToUserName", corp_id),
        ("FromUserName", "sys" if sys_sender else None),
        ("CreateTime", create_time),
        ("MsgType", "event"),
        ("Event", event),
    ]


def change_external_contact(
    corp_id: str,
    create_time: int,
    change_type: str,
    userid: str,
    external_userid: str,
    *,
    state: str | None = None,
    welcome_code: str | None = None,
    source: str | None = None,
    fail_reason: str | None = None,
) -> str:
    """客户变更: add/edit/add_half/del_external_contact, del_follow_user, transfer_fail, msg_audit_…"""
    head = _event(corp_id, create_time, "change_external_contact")
    head.append(("ChangeType", change_type))
    if change_type == "transfer_fail":
        # The sample puts FailReason before UserID (PROTOCOL.md §2.1); UserID is the taker.
        head.append(("FailReason", fail_reason or "customer_refused"))
    head += [
        ("UserID", userid),
        ("ExternalUserID", external_userid),
        ("State", state),
        ("WelcomeCode", welcome_code),
        ("Source", source),
    ]
    return render_xml(head)


def change_external_chat(
    corp_id: str,
    create_time: int,
    change_type: str,
    chat_id: str,
    *,
    update_detail: str | None = None,
    join_scene: int | None = None,
    quit_scene: int | None = None,
    mem_change_list: list[str] | None = None,
    last_mem_ver: str | None = None,
    cur_mem_ver: str | None = None,
) -> str:
    """客户群变更: create / update (UpdateDetail, Join/QuitScene, MemChange*) / dismiss."""
    fields = _event(corp_id, create_time, "change_external_chat")
    fields += [
        ("ChatId", chat_id),
        ("ChangeType", change_type),
        ("UpdateDetail", update_detail),
        ("JoinScene", join_scene),
        ("QuitScene", quit_scene),
    ]
    if mem_change_list is not None:
        fields += [("MemChangeCnt", len(mem_change_list)), ("MemChangeList", mem_change_list)]
    fields += [("LastMemVer", last_mem_ver), ("CurMemVer", cur_mem_ver)]
    return render_xml(fields)


def change_external_tag(
    corp_id: str,
    create_time: int,
    change_type: str,
    tag_or_group_id: str,
    tag_type: str | None = "tag",
    strategy_id: int | None = 0,
) -> str:
    """企业客户标签变更: create/update/delete (Id + TagType) and shuffle (Id = group or empty, no TagType)."""
    fields = _event(corp_id, create_time, "change_external_tag")
    fields += [
        ("Id", tag_or_group_id),
        ("TagType", None if change_type == "shuffle" else tag_type),
        ("ChangeType", change_type),
        ("StrategyId", strategy_id),
    ]
    return render_xml(fields)


def change_contact(corp_id: str, create_time: int, change_type: str, userid: str, **extra: XmlValue) -> str:
    """通讯录变更: create_user / update_user / delete_user (extra: Name, Department, …)."""
    fields = _event(corp_id, create_time, "change_contact")
    fields += [("ChangeType", change_type), ("UserID", userid), *extra.items()]
    return render_xml(fields)


def kf_msg_or_event(corp_id: str, create_time: int, token: str, open_kfid: str) -> str:
    """微信客服消息通知: no FromUserName, no content — only Token and OpenKfId for kf/sync_msg."""
    fields = _event(corp_id, create_time, "kf_msg_or_event", sys_sender=False)
    fields += [("Token", token), ("OpenKfId", open_kfid)]
    return render_xml(fields)


def msgaudit_notify(corp_id: str, create_time: int, agent_id: int = 2000004) -> str:
    """会话存档新消息通知: AgentID sits before Event in the published sample."""
    return render_xml(
        [
            ("ToUserName", corp_id),
            ("FromUserName", "sys"),
            ("CreateTime", create_time),
            ("MsgType", "event"),
            ("AgentID", agent_id),
            ("Event", "msgaudit_notify"),
        ]
    )


def text_message(
    corp_id: str, create_time: int, userid: str, content: str, msg_id: int, agent_id: int
) -> str:
    """成员发给应用的文本消息 (MsgType=text)."""
    return render_xml(
        [
            ("ToUserName", corp_id),
            ("FromUserName", userid),
            ("CreateTime", create_time),
            ("MsgType", "text"),
            ("Content", content),
            ("MsgId", msg_id),
            ("AgentID", agent_id),
        ]
    )


class CallbackEmitter:
    """Encrypts, signs and delivers event XML the way WeCom does (POST ?msg_signature&timestamp&nonce).

    `post(url, query, body)` replaces HTTP (e.g. a Flask test client); with no callback URL the
    envelopes go to `outbox` so a test can fetch them (GET /_sim/outbox) and post them itself.
    """

    def __init__(
        self,
        callback_url: str | None,
        token: str,
        encoding_aes_key: str,
        corp_id: str,
        post: PostHook | None = None,
        outbox: list[dict[str, Any]] | None = None,
        agent_id: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.callback_url = callback_url
        self.crypto = WeComCrypto(token, encoding_aes_key, corp_id)
        self.corp_id = corp_id
        self.post = post
        self.outbox = outbox if outbox is not None else []
        self.agent_id = agent_id
        self.timeout = timeout

    def envelope(self, xml: str, timestamp: int | None = None) -> EncryptedEnvelope:
        return self.crypto.envelope(
            xml, timestamp=str(timestamp) if timestamp else None, agent_id=self.agent_id
        )

    def emit(self, xml: str, timestamp: int | None = None) -> EncryptedEnvelope:
        """Deliver one event. Failures are logged, not raised: WeCom does not care why you failed."""
        env = self.envelope(xml, timestamp)
        body = env.body.encode()
        if self.post is not None:
            self.post(self.callback_url or "/", env.query, body)
        elif self.callback_url:
            try:
                resp = requests.post(
                    self.callback_url,
                    params=env.query,
                    data=body,
                    timeout=self.timeout,
                    headers={"Content-Type": "text/xml"},
                )
                if resp.status_code != 200:
                    log.warning("callback %s answered HTTP %s", self.callback_url, resp.status_code)
            except requests.RequestException as exc:
                log.warning("callback %s failed: %s", self.callback_url, exc)
        else:
            self.outbox.append({"xml": xml, "body": env.body, "query": env.query})
        return env
