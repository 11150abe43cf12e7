"""Everything that talks to the upstream API: header hygiene (``headers``), the pooled client
whose responses never raise foreign exceptions (``client``), relaying bodies to the gateway's
client (``relay``), and a function-backed stand-in for unit tests (``fake``)."""

from gateway.upstream.client import Upstream, UpstreamClient, UpstreamResponse

__all__ = ["Upstream", "UpstreamClient", "UpstreamResponse"]
