"""The runtime shell: the Plant built from a config (build), the Gateway that runs it (polling, the tick, the live
parts), reload without shared state, the daemon (signals, sd_notify) and health (the systemd watchdog).
"""
