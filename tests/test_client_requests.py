"""The request line a NodeClient sends, in pieces (nodes/client.py request_parts): joined, the
pieces are the line json.dumps would write, and an encoded value is its own piece, the very
bytes object every node's request shares."""

from __future__ import annotations

import json

from gitorch.nodes.client import Encoded, encode_request, request_parts


def test_pieces_join_to_the_line_and_share_encoded_values() -> None:
    table = Encoded([{"name": "shop/web", "endpoints": [{"ip": "10.64.0.2", "port": 8080}]}])
    pods = Encoded([{"name": "web-0", "namespace": "shop"}])
    payload = {"pods": pods, "network": {"podCIDR": "10.64.0.0/24"}, "services": table, "fence": None}
    expected = json.dumps({"verb": "sync", "pods": json.loads(pods.data), "network": payload["network"],
                           "services": json.loads(table.data), "fence": None}).encode()
    first, second = request_parts("sync", payload), request_parts("sync", {**payload, "pods": Encoded([])})
    assert b"".join(first) == expected == encode_request("sync", payload)
    assert any(p is table.data for p in first) and any(p is table.data for p in second)
    assert b', "services": ' in first  # the agent-side fake finds the table by its own piece
    plain = {"since": "etag-1"}
    assert request_parts("status", plain) == [json.dumps({"verb": "status", **plain}).encode()]
