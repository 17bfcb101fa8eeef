"""The regulator's side: the reference receiver (acceptance of each (gateway, seq) exactly once, the chain check,
its store and web app) and the offline verifier of an export. Imports only the chain, the model and tlsutil.
"""
