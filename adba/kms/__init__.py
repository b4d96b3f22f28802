"""KMS: the fallback when there is no activation object.

``protocol`` (wire format, no I/O), ``cache`` (counting, no I/O), ``store`` (SQLite), ``host``
(the asyncio server), ``publication`` (the host's own SRV record, published daily),
``client`` (the agent's side: which hosts to ask in what order, ask one, verify its answer).
"""
