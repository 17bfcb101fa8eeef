"""Protocol adapters behind one small interface (see drivers/base.py).

drivers/ imports nothing of gateway/ but the shared value types in gateway.model.
"""
