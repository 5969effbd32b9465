"""In-memory state of the fake WeCom (企业微信模拟器).

One `SimState` is one corp. Every mutation happens under `lock` because the simulator is
served by a threaded WSGI server and the tests call it from several clients at once.
Time comes from a controllable clock so tests can jump 7200 s (token expiry), 20 s
(welcome-code window) or 24 h (handover completion) without sleeping.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SimState", "Relation", "Handover", "new_id"]

TOKEN_TTL = 7200  # gettoken expires_in (PROTOCOL.md §3.1)
TICKET_TTL = 7200
WELCOME_WINDOW = 20  # send_welcome_msg must come within 20 s (§3.6)
OAUTH_CODE_TTL = 300  # OAuth code: single use, 5 min (§3.10)
HANDOVER_DELAY = 24 * 3600  # takeover completes automatically after 24 h (§3.7)
KF_RETENTION = 3 * 24 * 3600  # kf/sync_msg returns the last 3 days only (§3.9)


def new_id(prefix: str, length: int = 30) -> str:
    """WeCom-shaped random id: `wm…` customers, `wr…` groups, `et…` tags, `wk…` kf accounts."""
    return prefix + secrets.token_urlsafe(length)[: length - len(prefix)].replace("-", "A").replace(
        "_", "B"
    )


@dataclass
class Relation:
    """One follow relation (跟进关系) between a member and a customer."""

    userid: str
    external_userid: str
    createtime: int
    remark: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    state: str = ""
    add_way: int = 1
    oper_userid: str = ""
    remark_corp_name: str = ""
    remark_mobiles: list[str] = field(default_factory=list)


@dataclass
class Handover:
    """One customer handover (客户继承); the status is derived from the clock when queried."""

    kind: str  # "onjob" | "resigned"
    handover_userid: str
    takeover_userid: str
    external_userid: str
    started_at: int
    outcome: int = 1  # final status once it resolves: 1 done, 3 refused, 4 taker at limit
    settled: bool = False  # relation moved / transfer_fail emitted

    @property
    def takeover_time(self) -> int:
        return self.started_at + HANDOVER_DELAY


class SimState:
    """Everything the fake WeCom knows. Plain dicts so the control API can dump it as JSON."""

    def __init__(self, corp_id: str = "ww59709431338c5fb3", start_time: float | None = None,
                 live: bool = False) -> None:
        """`live`: the clock runs with real time (plus any `advance`), as the demo and the service tests
        need (event CreateTimes, the 20 s welcome window); otherwise it only moves when advanced."""
        self.lock = threading.RLock()
        self.corp_id = corp_id
        self._base = float(start_time if start_time is not None else time.time())
        self._offset = 0.0
        self._live_since = time.monotonic() if live else None
        # app name -> {"secret", "agent_id", "ip_trusted"}; "contact" is the legacy 客户联系 secret.
        self.apps: dict[str, dict[str, Any]] = {
            "1000002": {"secret": "sim-app-secret", "agent_id": 1000002, "ip_trusted": True},
            "contact": {"secret": "sim-contact-secret", "agent_id": None, "ip_trusted": True},
        }
        self.employees: dict[str, dict[str, Any]] = {}
        self.departments: dict[int, dict[str, Any]] = {
            1: {"id": 1, "name": "总部", "parentid": 0, "order": 1}
        }
        self.tag_groups: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, dict[str, Any]] = {}
        self.relations: dict[tuple[str, str], Relation] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.contact_ways: dict[str, list[str]] = {}
        self.welcome_codes: dict[str, dict[str, Any]] = {}
        self.welcome_busy_once: set[str] = set()  # codes that answer 41096 once (another app sending)
        self.mass_sends: dict[str, dict[str, Any]] = {}
        self.kf_accounts: dict[str, str] = {}
        self.kf_messages: list[dict[str, Any]] = []
        self.kf_tokens: dict[str, int] = {}
        self.handovers: list[Handover] = []
        self.refusing_customers: set[str] = set()
        self.takers_at_limit: set[str] = set()
        self.tokens: dict[str, dict[str, Any]] = {}
        self.tickets: dict[str, dict[str, Any]] = {}
        self.oauth_codes: dict[str, dict[str, Any]] = {}
        self.app_messages: list[dict[str, Any]] = []
        self.media: dict[str, dict[str, Any]] = {}
        self.calls: list[dict[str, Any]] = []
        self.outbox: list[dict[str, Any]] = []
        self.faults: dict[str, Any] = {"rate": 0.0, "codes": [], "seed": None, "paths": None}
        self._rng = random.Random()  # noqa: S311 - fault injection, not security
        self.scripted_faults: dict[str, list[int]] = {}  # path -> errcodes answered to the next calls
        self.rate_limits: dict[str, int] = {}  # path -> calls per minute (then 45009)
        self._rate_windows: dict[tuple[str, int], int] = {}
        self.page_sizes: dict[str, int] = {"transfer_result": 1000}  # shrink to exercise paging
        self.callback_ips = ["101.226.103.0/25", "101.226.62.0/24", "140.207.54.0/24"]

    # -- clock -------------------------------------------------------------------------------
    def now(self) -> int:
        running = time.monotonic() - self._live_since if self._live_since is not None else 0.0
        return int(self._base + self._offset + running)

    def advance(self, seconds: float) -> int:
        with self.lock:
            self._offset += seconds
            return self.now()

    # -- fault injection ---------------------------------------------------------------------
    def set_faults(
        self,
        rate: float = 0.0,
        codes: list[int] | None = None,
        seed: int | None = None,
        paths: list[str] | None = None,
    ) -> None:
        with self.lock:
            self.faults = {"rate": rate, "codes": list(codes or []), "seed": seed, "paths": paths}
            self._rng = random.Random(seed)  # noqa: S311 - reproducible chaos, not security

    def draw_fault(self, path: str) -> int | None:
        """Errcode to inject for this call, if the dice say so (seeded for reproducible runs)."""
        with self.lock:
            if self.scripted_faults.get(path):
                return self.scripted_faults[path].pop(0)
            f = self.faults
            if not f["rate"] or not f["codes"] or (f["paths"] and path not in f["paths"]):
                return None
            if self._rng.random() >= f["rate"]:
                return None
            return int(self._rng.choice(f["codes"]))

    def over_rate_limit(self, path: str) -> bool:
        """Count the call in its sim-clock minute; True when it exceeds the path's limit."""
        with self.lock:
            limit = self.rate_limits.get(path)
            if limit is None:
                return False
            window = (path, self.now() // 60)
            self._rate_windows[window] = self._rate_windows.get(window, 0) + 1
            return self._rate_windows[window] > limit

    # -- tokens ------------------------------------------------------------------------------
    def app_by_secret(self, secret: str) -> str | None:
        for name, app in self.apps.items():
            if secrets.compare_digest(str(app["secret"]), secret):
                return name
        return None

    def issue_token(self, app: str) -> tuple[str, int]:
        with self.lock:
            token = "simtok_" + secrets.token_urlsafe(24)
            self.tokens[token] = {"app": app, "expires_at": self.now() + TOKEN_TTL}
            return token, TOKEN_TTL

    def issue_ticket(self, app: str, kind: str) -> tuple[str, int]:
        with self.lock:
            ticket = f"simticket_{kind}_" + secrets.token_urlsafe(24)
            self.tickets[ticket] = {"app": app, "kind": kind, "expires_at": self.now() + TICKET_TTL}
            return ticket, TICKET_TTL

    # -- domain helpers ----------------------------------------------------------------------
    def add_employee(self, userid: str, name: str, department: list[int] | None = None, **extra: Any) -> None:
        with self.lock:
            self.employees[userid] = {
                "userid": userid,
                "name": name,
                "department": list(department or [1]),
                "is_leader_in_dept": [0] * len(department or [1]),
                "status": 1,
                "customer_contact": True,
                "position": "",
                "direct_leader": [],
                **extra,
            }

    def add_customer(self, name: str, external_userid: str | None = None, **extra: Any) -> str:
        with self.lock:
            eid = external_userid or new_id("wm", 32)
            self.customers[eid] = {
                "external_userid": eid,
                "name": name,
                "type": 1,
                "gender": 0,
                "avatar": f"https://wework.qpic.cn/sim/{eid}/0",
                **extra,
            }
            return eid

    def relate(self, userid: str, external_userid: str, **fields: Any) -> Relation:
        with self.lock:
            fields.setdefault("createtime", self.now())
            fields.setdefault("oper_userid", userid)
            rel = Relation(userid=userid, external_userid=external_userid, **fields)
            self.relations[(userid, external_userid)] = rel
            return rel

    def issue_welcome_code(self, userid: str, external_userid: str) -> str:
        with self.lock:
            code = "Wc_" + secrets.token_hex(16)
            self.welcome_codes[code] = {
                "issued_at": self.now(),
                "used": False,
                "userid": userid,
                "external_userid": external_userid,
            }
            return code

    def create_group(self, spec: dict[str, Any]) -> str:
        """Insert a customer group (客户群): spec has owner, name, members (userids/external ids), admins."""
        with self.lock:
            chat_id = spec.get("chat_id") or new_id("wr", 32)
            now = int(spec.get("create_time") or self.now())
            owner = spec["owner"]
            members = [{"userid": owner, "type": 1, "join_time": now, "join_scene": 1, "group_nickname": ""}]
            members += [
                {
                    "userid": m,
                    "type": 1 if m in self.employees else 2,
                    "join_time": now,
                    "join_scene": 1,
                    "group_nickname": "",
                    "invitor": {"userid": owner},
                }
                for m in spec.get("members") or []
                if m != owner
            ]
            self.groups[chat_id] = {
                "chat_id": chat_id,
                "name": spec.get("name", ""),
                "owner": owner,
                "create_time": now,
                "notice": spec.get("notice", ""),
                "member_list": members,
                "status": 0,
                "admin_list": [{"userid": a} for a in spec.get("admins") or []],
                "member_version": secrets.token_hex(8),
            }
            return chat_id

    def tag_index(self) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """tag id -> (group, tag), live tags only."""
        return {t["id"]: (g, t) for g in self.tag_groups.values() for t in g["tag"]}

    def handover_status(self, h: Handover) -> int:
        """2 waiting until takeover_time; refusals/over-limit resolve immediately, like WeCom's event."""
        if h.outcome in (3, 4):
            return h.outcome
        return 1 if self.now() >= h.takeover_time else 2

    def log_call(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append(entry)

    def calls_to(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if path is None or c["path"] == path]
