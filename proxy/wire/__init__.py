"""Sans-IO PostgreSQL wire protocol: framing, startup packets, query-cycle state, builders.

Nothing here touches a socket or an event loop; the session feeds bytes in and acts
on what comes out, so every edge case is a unit test of bytes in, events out.
"""
