"""The demo's pass/fail rule and its wait for the scenario's outcome (gateway.ops.demo.settled, failures):
the demo waits for outcomes, never a fixed time, and says which outcome is missing."""

from gateway.ops.demo import failures, settled

END = 1_800_000_000.0  # the scenario's end, UTC epoch s


def status(*, outputs=(), store=None):
    return {"outputs": list(outputs), "store": {"batches_unacked": 0, "oldest_unsent_ts": None, **(store or {})}}


def test_settled_waits_for_every_output_confirmed_or_given_up():
    assert settled(status(outputs=[{"tag": "XV101", "confirmed": True, "busy": False, "fault": False}]), END)
    assert not settled(status(outputs=[{"tag": "XV101", "confirmed": False, "busy": False, "fault": False}]), END)
    assert not settled(status(outputs=[{"tag": "XV101", "confirmed": True, "busy": True, "fault": False}]), END)
    # an output fault is an outcome (the operator sees it; the demo then fails on the unconfirmed trip)
    assert settled(status(outputs=[{"tag": "XV101", "confirmed": False, "busy": False, "fault": True}]), END)


def test_settled_waits_for_the_uplink_to_hold_everything_up_to_the_end():
    assert not settled(None, END)
    assert not settled(status(store={"batches_unacked": 1}), END)
    assert not settled(status(store={"error": "store busy"}), END)
    # END is 2027-01-15T08:00:00Z: a reading polled before it and not yet acknowledged keeps the demo waiting
    assert not settled(status(store={"oldest_unsent_ts": "2027-01-15T07:59:59.900Z"}), END)
    assert settled(status(store={"oldest_unsent_ts": "2027-01-15T08:00:00.100Z"}), END)
    assert settled(status(), END)


def passing():
    return {"trips": [{"interlock": "T101_overfill", "output": "XV101", "value": 0, "confirmed": "t"}],
            "readings_lost": 0, "readings_unsent": 0, "batches_sent": 5, "batches_exported": 5,
            "batches_verified": 5, "verify_faults": []}


def test_failures_name_each_missing_outcome():
    assert failures(passing()) == []
    s = passing() | {"trips": []}
    assert failures(s) == ["no interlock tripped"]
    s = passing() | {"trips": [{"interlock": "gas_esd", "output": "XV100", "value": 0, "confirmed": None}]}
    assert failures(s) == ["trip gas_esd: XV100 := 0 not confirmed by read-back"]
    s = passing() | {"readings_lost": 12, "readings_unsent": 12}
    assert failures(s) == ["12 readings stored by the gateway but not held by the receiver"
                           " (12 of them still unsent in the gateway's store)"]
    s = passing() | {"batches_sent": 0, "batches_exported": 0, "batches_verified": 0}
    assert failures(s) == ["no batch acknowledged by the receiver"]
    s = passing() | {"batches_verified": 4, "verify_faults": ["seq 3: signature"]}
    assert failures(s) == ["4 of 5 exported batches verified (5 acknowledged): seq 3: signature"]
