"""Network policy, exposed ports and tunnels of a sandbox.

    sb = moat.Sandbox.create(network=moat.Network.allow(["pypi.org", "10.1.0.0/16"]),
                             ports=[8080, moat.Port(8081, public=True)])
    url = sb.tunnels()[8080].url

Validation here is only what catches a typo early (types, the mode name);
moatd is the authority on what an entry may be and answers 400
invalid_argument for anything it refuses.
"""

from . import errors

_MODES = ("none", "allow", "internet")


class Network:
    """A sandbox's egress policy: ``none`` (loopback only, the default),
    ``internet`` (outbound NAT; private ranges blocked unless allowed) or
    ``allow`` (only the listed CIDRs, addresses and domain names)."""

    def __init__(self, mode, allow=None, bandwidth_mbps=None, max_connections=None):
        if mode not in _MODES:
            raise errors.InvalidArgument("network mode must be one of %s, not %r"
                                         % ("/".join(_MODES), mode))
        if allow is not None:
            if isinstance(allow, str):
                # A bare string would otherwise be allowed character by character.
                allow = [allow]
            allow = list(allow)
            for entry in allow:
                if not isinstance(entry, str):
                    raise errors.InvalidArgument("allow entries must be str, got %s"
                                                 % type(entry).__name__)
        for name, value in (("bandwidth_mbps", bandwidth_mbps), ("max_connections", max_connections)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise errors.InvalidArgument("%s must be an int, got %r" % (name, value))
        self.mode = mode
        self.allow_list = allow
        self.bandwidth_mbps = bandwidth_mbps
        self.max_connections = max_connections

    @classmethod
    def none(cls):
        """Loopback only."""
        return cls("none")

    @classmethod
    def internet(cls, allow=None, bandwidth_mbps=None, max_connections=None):
        """Outbound internet; ``allow`` may open private ranges that are otherwise blocked."""
        return cls("internet", allow, bandwidth_mbps, max_connections)

    @classmethod
    def allow(cls, entries, bandwidth_mbps=None, max_connections=None):
        """Only these CIDRs, addresses and names (``"*.example.com"`` wildcards)."""
        return cls("allow", entries, bandwidth_mbps, max_connections)

    @classmethod
    def from_json(cls, doc):
        """The policy from a sandbox object's ``"network"`` (an object or a mode name)."""
        if doc is None:
            return cls.none()
        if isinstance(doc, str):
            return cls(doc)
        return cls(doc.get("mode", "none"), doc.get("allow"), doc.get("bandwidth_mbps"),
                   doc.get("max_connections"))

    def to_json(self):
        body = {"mode": self.mode}
        if self.allow_list is not None:
            body["allow"] = list(self.allow_list)
        if self.bandwidth_mbps is not None:
            body["bandwidth_mbps"] = self.bandwidth_mbps
        if self.max_connections is not None:
            body["max_connections"] = self.max_connections
        return body

    def __eq__(self, other):
        return isinstance(other, Network) and self.to_json() == other.to_json()

    def __repr__(self):
        return "Network(%r)" % (self.to_json(),)


def network_body(network):
    """The JSON for ``network=``: a Network, a mode name, or a dict sent as is."""
    if isinstance(network, Network):
        return network.to_json()
    if isinstance(network, str):
        return Network(network).to_json()
    if isinstance(network, dict):
        return dict(network)
    raise errors.InvalidArgument("network must be a moat.Network, a mode name or a dict, not %s"
                                 % type(network).__name__)


class Port:
    """A sandbox port to expose through moatd. Non-public ports need the
    tunnel's token (header ``X-Moat-Token`` or query ``moat_token``)."""

    def __init__(self, port, public=False):
        if isinstance(port, bool) or not isinstance(port, int):
            raise errors.InvalidArgument("a port must be an int, got %r" % (port,))
        self.port = port
        self.public = bool(public)

    def to_json(self):
        return {"port": self.port, "public": self.public} if self.public else self.port

    def __repr__(self):
        return "Port(%d%s)" % (self.port, ", public=True" if self.public else "")


def ports_body(ports):
    """The JSON list for ``ports=``: ints, Port objects or dicts."""
    if isinstance(ports, (int, Port, dict)):
        ports = [ports]
    body = []
    for entry in ports:
        if isinstance(entry, Port):
            body.append(entry.to_json())
        elif isinstance(entry, dict):
            body.append(dict(entry))
        elif isinstance(entry, int) and not isinstance(entry, bool):
            body.append(entry)
        else:
            raise errors.InvalidArgument("ports entries must be int, moat.Port or dict, not %r"
                                         % (entry,))
    return body


class Tunnel:
    """How to reach an exposed port from the host: ``url`` (http://addr:host_port),
    and for a non-public port the ``token`` it requires."""

    def __init__(self, port, url, token, public, host_port):
        self.port = port
        self.url = url
        self.token = token
        self.public = public
        self.host_port = host_port

    @classmethod
    def from_json(cls, doc):
        return cls(doc.get("port"), doc.get("url"), doc.get("token"), bool(doc.get("public")),
                   doc.get("host_port"))

    @property
    def headers(self):
        """The request headers that authenticate to this tunnel."""
        return {} if self.public or not self.token else {"X-Moat-Token": self.token}

    def __repr__(self):
        # The token is a credential: keep it out of logs and tracebacks.
        return "Tunnel(port=%r, url=%r, public=%r)" % (self.port, self.url, self.public)
