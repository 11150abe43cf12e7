"""A request's way through the gateway: the catch-all route (``proxy``), the metered path
(``metered``), passthrough and the team's model list, the one forwarding helper (``forward``),
team policy as pure functions, and the exchange that metrics and the access log record."""

from gateway.pipeline.exchange import REQUEST_ID, Exchange, new_request_id
from gateway.pipeline.proxy import handle_proxy
from gateway.pipeline.usage import handle_usage, usage_entry

__all__ = [
    "REQUEST_ID",
    "Exchange",
    "handle_proxy",
    "handle_usage",
    "new_request_id",
    "usage_entry",
]
