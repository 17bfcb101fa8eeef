"""The record path: at-least-once from the poll to the receiver, exactly-once in effect there.

Report-by-exception, the clock-step watch, the SQLite store (WAL, retention floor), signed batches and their chain
position, the uplink transports (HTTPS, MQTT) and platform envelopes, the rejection journal and the supervisor that
keeps the store writer and the forwarder alive without ever touching the safety path.
"""
