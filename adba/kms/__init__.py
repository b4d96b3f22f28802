"""KMS: the fallback when there is no activation object.

``protocol`` (wire format, no I/O), ``cache`` (counting, no I/O), ``store`` (SQLite), ``host``
(the asyncio server), ``client`` (the agent's side: ask a host, verify its answer).
"""
