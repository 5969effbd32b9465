"""schemathesis against our own OpenAPI document: no 5xx and no response that violates the schema.

Excluded: the "schema-valid data must be accepted" check. Opaque values (a cursor this API returned,
ids that do not exist) are schema-valid strings that the API rightly refuses with a 4xx and a reason.

Every documented operation of every area gets generated inputs (valid and invalid) through the real
app, database and Redis. (schemathesis' pytest plugin does not run on pytest 9, so the operations'
strategies are driven with hypothesis directly.)
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import ADMIN

EXAMPLES = int(os.environ.get("SOPBOT_FUZZ_EXAMPLES", "10" if os.environ.get("CI") else "5"))


def _operations(app: Any) -> list[Any]:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def test_every_documented_operation_is_fuzzed(app: Any) -> None:
    operations = _operations(app)
    assert len(operations) >= 10
    failures: list[str] = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            case.call_and_validate(headers=ADMIN, excluded_checks=[positive_data_acceptance])

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then fail once with all of them
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)
