"""Exceptions raised by the moat SDK.

Every failure reaches the caller as a subclass of :class:`moat.Error` carrying
the server's stable error ``code``, its ``message`` and the HTTP ``status``;
transport failures (no daemon, a dropped connection) are :class:`Unavailable`,
never a bare ``http.client`` or ``OSError``.
"""


class Error(Exception):
    """Base of every moat error.

    ``code`` is the server's stable machine code (``"not_found"``,
    ``"sandbox_not_running"``, ...), ``message`` the human text, ``status``
    the HTTP status (``None`` for errors raised on the client side).
    """

    default_code = "error"

    def __init__(self, message="", code=None, status=None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status

    def __str__(self):
        if self.status is not None:
            return "%s (%s, HTTP %d)" % (self.message, self.code, self.status)
        return "%s (%s)" % (self.message, self.code)


class InvalidArgument(Error):
    default_code = "invalid_argument"


class NotFound(Error):
    default_code = "not_found"


class ExecNotFound(NotFound):
    """argv[0] could not be executed inside the sandbox."""

    default_code = "exec_not_found"


class MethodNotAllowed(Error):
    default_code = "method_not_allowed"


class Conflict(Error):
    default_code = "conflict"


class SandboxTerminated(Error):
    """The sandbox has stopped (exited, timed out, was terminated)."""

    default_code = "sandbox_not_running"


class SandboxNotRunning(Conflict, SandboxTerminated):
    default_code = "sandbox_not_running"


class StdinClosed(Conflict):
    default_code = "stdin_closed"


class LimitExceeded(Error):
    default_code = "limit_exceeded"


class PayloadTooLarge(LimitExceeded):
    default_code = "payload_too_large"


class OutputTooLarge(LimitExceeded):
    default_code = "output_too_large"


class Timeout(Error):
    """A wait ran out of time (client side), or the server reported a timeout."""

    default_code = "timeout"


class Unavailable(Error):
    """moatd cannot be reached, or is shutting down."""

    default_code = "unavailable"


class InternalError(Error):
    default_code = "internal"


# Specific codes first: they pick a narrower class than their status would.
_BY_CODE = {
    "invalid_argument": InvalidArgument,
    "not_found": NotFound,
    "exec_not_found": ExecNotFound,
    "method_not_allowed": MethodNotAllowed,
    "conflict": Conflict,
    "sandbox_not_running": SandboxNotRunning,
    "stdin_closed": StdinClosed,
    "image_in_use": Conflict,
    "payload_too_large": PayloadTooLarge,
    "limit_exceeded": LimitExceeded,
    "output_too_large": OutputTooLarge,
    "timeout": Timeout,
    "unavailable": Unavailable,
    "internal": InternalError,
    "system": InternalError,
    # Images: codes that arrive inside a 200 stream (pull, build) map here.
    "image_not_found": NotFound,
    "unauthorized": InvalidArgument,
    "bad_layer": InvalidArgument,
    "bad_image": InvalidArgument,
    "digest_mismatch": InvalidArgument,
    "unsupported_media_type": InvalidArgument,
    "no_matching_platform": InvalidArgument,
    "platform_not_found": InvalidArgument,
    "missing_blob": InvalidArgument,
    "registry_error": Unavailable,
    "debootstrap_failed": Unavailable,
    # build_step_failed: moat.BuildError (image_builder.py), with the step.
    "network_unavailable": Unavailable,
}

# Unknown codes map by status, as docs/API.md asks of clients.
_BY_STATUS = {
    400: InvalidArgument,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    429: LimitExceeded,
    500: InternalError,
    503: Unavailable,
    504: Timeout,
}


def error_from_response(status, code, message):
    """The exception for an error response: by code, else by status."""
    cls = _BY_CODE.get(code) if code else None
    if cls is None:
        cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InternalError if status >= 500 else Error
    return cls(message or ("HTTP %d" % status), code=code or cls.default_code, status=status)
