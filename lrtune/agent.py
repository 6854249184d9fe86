"""``lrtune agent``: run the user's training script once per claimed trial, as ``wandb agent``
does. The agent holds the lease (claims, heartbeats) and passes the trial to the script in
``LRTUNE_LEASE``, where ``lrtune.current_trial()`` reads it; the script reports and ends it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Sequence

from lrtune.client import Client
from lrtune.leasing import ENV_LEASE, LEASE_PATH, ClientError, Heartbeat, leases

log = logging.getLogger("lrtune.agent")


def run_agent(client: Client, study_id: int, command: Sequence[str],
              count: int | None = None, idle: float = 1.0) -> int:
    """Run ``command`` for each trial claimed from the study until it ends (or ``count``
    trials); the number of trials run. A script that exits without ending its trial has it
    ended FAIL (killed by a signal: left to be reaped as lost and re-run); Ctrl-C stops the
    agent after the script, handing an unfinished trial back."""
    done = 0
    for lease in leases(client, study_id, count, idle):
        lease_id, number = int(lease["lease"]), lease["trials"][0]["number"]
        log.info("study %d trial %d: running %s", study_id, number, " ".join(command))
        env = {**os.environ, ENV_LEASE: json.dumps(lease), "LRTUNE_URL": client.url,
               "LRTUNE_TOKEN": client.token}
        beat = Heartbeat(client, lease_id, float(lease["heartbeat_interval"]))
        process = subprocess.Popen(list(command), env=env)
        try:
            code = _wait(process)
        except KeyboardInterrupt:
            code = _wait(process)
            _settle(client, lease_id, number, None, interrupted=True)
            raise
        finally:
            beat.stop()
        _settle(client, lease_id, number, code)
        done += 1
    return done


def _wait(process: subprocess.Popen[bytes]) -> int:
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # the script got the same Ctrl-C: let it hand back first
            continue


def _settle(client: Client, lease_id: int, number: int, code: int | None,
            interrupted: bool = False) -> None:
    """End what the script left running."""
    path = f"{LEASE_PATH}/{lease_id}"
    try:
        client.call("POST", f"{path}/heartbeat")
    except ClientError as error:
        if error.status == 409:  # the script ended it (or it was reaped)
            return
        raise
    if interrupted:
        client.call("POST", f"{path}/release", json={"reason": "agent interrupted (Ctrl-C)"})
    elif code is not None and code < 0:
        log.warning("trial %d: the script was killed by signal %d; the trial is lost and "
                    "will be re-run", number, -code)
    else:
        reason = f"failed: the script exited with code {code} without ending trial {number}"
        client.call("POST", f"{path}/finish", json={"trials": [
            {"number": number, "state": "FAIL", "reason": reason}]})
        log.warning("trial %d %s", number, reason)
