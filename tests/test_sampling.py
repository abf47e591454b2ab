"""``sample_by_user`` and ``chain_before_send``: the same users kept everywhere, all or none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

import segops_fast as segops
from segops_fast.testing import LocalIngestServer

from .conftest import MakeClient

_USERS = [f"user-{index}" for index in range(2000)]

# Which of the users a fresh interpreter keeps at rate 0.25.
_KEPT_IN_A_FRESH_PROCESS = """
import json, sys
import segops_fast
keep = segops_fast.sample_by_user(0.25)
users = json.loads(sys.stdin.read())
print(json.dumps([u for u in users if keep({"user_id": u, "event_type": "e", "payload": {}})]))
"""


def _kept_in_subprocess(hash_seed: str) -> list[str]:
    completed = subprocess.run(
        [sys.executable, "-c", _KEPT_IN_A_FRESH_PROCESS],
        input=json.dumps(_USERS),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
    )
    kept: list[str] = json.loads(completed.stdout)
    return kept


def test_every_process_keeps_the_same_users_whatever_its_hash_seed() -> None:
    first, second = _kept_in_subprocess("1"), _kept_in_subprocess("2")
    assert first == second
    # 2,000 users at 0.25: 500 expected, standard deviation about 19.
    assert 400 < len(first) < 600


def test_a_user_s_events_are_all_kept_or_all_dropped_at_the_server(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(before_send=segops.sample_by_user(0.3))
    users = _USERS[:200]
    for round_ in range(5):
        for user in users:
            client.track(user_id=user, event_type="e", payload={"round": round_})
    client.flush(timeout=10)

    rounds_by_user: dict[str, list[int]] = {}
    for event in server.events:
        rounds_by_user.setdefault(event["user_id"], []).append(event["payload"]["round"])
    assert all(sorted(rounds) == [0, 1, 2, 3, 4] for rounds in rounds_by_user.values())
    assert 30 < len(rounds_by_user) < 90  # 60 expected
    stats = client.stats()
    assert stats.sent == 5 * len(rounds_by_user)
    assert stats.filtered == 5 * (len(users) - len(rounds_by_user))


def test_raising_the_rate_only_adds_users() -> None:
    event: dict[str, Any] = {"event_type": "e", "payload": {}}
    kept_at = {
        rate: {u for u in _USERS if segops.sample_by_user(rate)({**event, "user_id": u})}
        for rate in (0.0, 0.1, 0.5, 1.0)
    }
    assert kept_at[0.0] == set()
    assert kept_at[0.1] <= kept_at[0.5] <= kept_at[1.0] == set(_USERS)


@pytest.mark.parametrize("rate", [-0.1, 1.5, "0.5", None, True])
def test_a_rate_outside_0_to_1_is_refused(rate: Any) -> None:
    with pytest.raises(ValueError, match="rate must be a number from 0 to 1, got"):
        segops.sample_by_user(rate)


def test_chained_hooks_run_in_order_and_stop_at_the_first_drop(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    ran: list[str] = []

    def scrub(event: dict[str, Any]) -> dict[str, Any]:
        ran.append(event["user_id"])
        event["payload"].pop("email", None)
        return event

    keep = segops.sample_by_user(0.5)
    client = make_client(before_send=segops.chain_before_send(keep, scrub))
    for user in _USERS[:100]:
        client.track(user_id=user, event_type="e", payload={"email": "a@b.c", "n": 1})
    client.flush(timeout=10)

    kept = [u for u in _USERS[:100] if keep({"user_id": u, "event_type": "e", "payload": {}})]
    assert ran == kept  # scrub ran only on the sampled users' events
    assert sorted(event["user_id"] for event in server.events) == sorted(kept)
    assert all(event["payload"] == {"n": 1} for event in server.events)


def test_chain_refuses_what_is_not_callable() -> None:
    with pytest.raises(TypeError, match="chain_before_send takes callables"):
        segops.chain_before_send(segops.sample_by_user(0.5), "scrub")  # type: ignore[arg-type]
