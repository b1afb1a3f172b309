"""HTTP for every peer markd talks to: one client, framed by h11, with hard deadlines.

* :mod:`markd.http.client` — :class:`~markd.http.client.HTTPClient`, the asyncio client
  (keep-alive pools, one deadline per request, proxies, streamed bodies);
* :mod:`markd.http.blocking` — :class:`~markd.http.blocking.BlockingHTTPClient`, the same
  client for code that runs in a thread of its own (the fleet sync, the ATOL web backend);
* :mod:`markd.http.errors` — the error tree both raise;
* :mod:`markd.http.connection` and :mod:`markd.http.tunnel` — the client's insides: one
  connection and the reading of answers on it, ``CONNECT`` tunnels through a proxy.

A foundation package: it imports nothing of markd beyond :mod:`markd.proxy` and the
foundations below it.
"""
