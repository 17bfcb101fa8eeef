"""The chain both sides share: Ed25519 JWS (RFC 7515/8037) signing, the hash link of batch to batch, and the signed
batch rejection. Imported by the edge (record path) and by the regulator side alike; imports only the model.
"""
