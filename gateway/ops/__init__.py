"""Operations for people: the control socket (acknowledge, shelve, bypass, reset), metrics, structured logs, probe
for commissioning, install-service, and the demo on the simulated tank farm.
"""
