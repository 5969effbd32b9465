"""Pure handler tests for change_external_chat, change_external_tag and change_contact."""

from __future__ import annotations

import pytest

from bot.actions import (
    DismissGroup,
    EnqueueCall,
    GroupMembersChanged,
    MarkEmployeeLeft,
    RecordTimeline,
    UpsertEmployee,
)
from tests.handlers.helpers import of_type, run

CHAT = "wrQ8xTCwAAm1nB2vC3xZ4lK5jH6gF7dS"


def test_group_create_fetches_the_group() -> None:
    _, actions = run("change_external_chat__create")
    assert [(c.kind, c.payload) for c in of_type(actions, EnqueueCall)] == [("fetch_group", {"chat_id": CHAT})]


def test_group_add_member_records_joins_on_customer_timelines() -> None:
    _, actions = run("change_external_chat__update__add_member")
    change = of_type(actions, GroupMembersChanged)[0]
    assert change.joined == ("wmQ8xTCwAAb3fFp0Yk2nHs9LdE7uVr1w", "wmQ8xTCwAAd5eRt7Yu9Io1Pa3Sd5Fg7h")
    entries = of_type(actions, RecordTimeline)
    assert {e.kind for e in entries} == {"joined_group"} and len(entries) == 2
    assert entries[0].detail == {"chat_id": CHAT, "scene": "3"}


def test_group_del_member_records_leaves() -> None:
    _, actions = run("change_external_chat__update__del_member")
    assert of_type(actions, GroupMembersChanged)[0].left == ("wmQ8xTCwAAd5eRt7Yu9Io1Pa3Sd5Fg7h",)
    assert [e.kind for e in of_type(actions, RecordTimeline)] == ["left_group"]


@pytest.mark.parametrize("name", ["change_external_chat__update__change_owner",
                                  "change_external_chat__update__change_name",
                                  "change_external_chat__update__change_notice"])
def test_group_detail_changes_refetch(name: str) -> None:
    _, actions = run(name)
    assert [c.kind for c in of_type(actions, EnqueueCall)] == ["fetch_group"]
    assert not of_type(actions, GroupMembersChanged)


def test_group_dismiss_marks_dismissed() -> None:
    event, actions = run("change_external_chat__dismiss")
    assert actions == [DismissGroup(CHAT, event.created_at)]


@pytest.mark.parametrize("name", ["change_external_tag__create", "change_external_tag__update",
                                  "change_external_tag__delete", "change_external_tag__shuffle"])
def test_tag_library_changes_resync_the_mirror(name: str) -> None:
    event, actions = run(name)
    (call,) = of_type(actions, EnqueueCall)
    assert call.kind == "sync_corp_tags" and call.payload["reason"] == event.change_type


def test_create_user_upserts_the_employee() -> None:
    _, actions = run("change_contact__create_user")
    employee = of_type(actions, UpsertEmployee)[0]
    assert employee.userid == "SunLi"
    assert employee.fields == {"active": True, "name": "孙丽", "department_ids": [2, 3]}


def test_update_user_upserts_the_employee() -> None:
    _, actions = run("change_contact__update_user")
    assert of_type(actions, UpsertEmployee)[0].fields["name"] == "孙丽丽"


def test_delete_user_marks_the_employee_left() -> None:
    event, actions = run("change_contact__delete_user")
    assert actions == [MarkEmployeeLeft("LiMing", event.created_at)]
