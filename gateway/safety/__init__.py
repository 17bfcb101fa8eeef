"""The safety path: what stands between a reading and an output write, in memory, never waiting on disk or network.

Alarm engine (ISA-18.2 / IEC 62682 states, GB/T 50493-2019 gas set points), input validity, interlocks with
voting and bypass, outputs with read-back, annunciators, the PLC watchdog heartbeat, and the safety state persisted
for a restart. Nothing here imports the record path or the regulator side (tests/test_architecture.py).
"""
