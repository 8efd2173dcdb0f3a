"""moat: sandboxes on your own Linux host.

    import moat
    with moat.Sandbox.create() as sb:
        p = sb.exec("python3", "-c", "print(1)")
        print(p.stdout.read(), p.wait())
"""

from ._transport import Client, DEFAULT_SOCKET
from .errors import (Conflict, Error, ExecNotFound, InternalError, InvalidArgument,
                     LimitExceeded, MethodNotAllowed, NotFound, OutputTooLarge,
                     PayloadTooLarge, SandboxNotRunning, SandboxTerminated, StdinClosed,
                     Timeout, Unavailable)
from .image import Image
from . import image_builder
from .image_builder import BuildError, ImageSpec
from .network import Network, Port, Tunnel
from .process import Process, StdinWriter, StreamReader
from .sandbox import CommandResult, Sandbox
from .volume import Volume

image_builder.attach_to(Image)  # moat.Image.debian(...).apt_install(...).build(name)

__version__ = "0.1.0"


def health(socket=None):
    """moatd's /v1/health document (raises moat.Unavailable if it is not running)."""
    return Client(socket).request("GET", "/v1/health")


__all__ = [
    "BuildError", "Client", "CommandResult", "Conflict", "DEFAULT_SOCKET", "Error", "ExecNotFound",
    "Image", "ImageSpec", "InternalError", "InvalidArgument", "LimitExceeded", "MethodNotAllowed", "Network", "NotFound",
    "OutputTooLarge", "Port", "PayloadTooLarge", "Process", "Sandbox", "SandboxNotRunning",
    "SandboxTerminated", "StdinClosed", "StdinWriter", "StreamReader", "Timeout",
    "Tunnel", "Unavailable", "Volume", "health",
]
