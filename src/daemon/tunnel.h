/* Exposed-port tunnels: a TCP listener on the host that forwards each
 * connection to 127.0.0.1:<port> inside one sandbox's network namespace.
 *
 * The sandbox-side socket is made with moat_netns_socket(), so the sandbox
 * needs no address reachable from the host and works in every network mode,
 * "none" included: the tunnel is the only way in.
 *
 * Two kinds:
 * - public (token NULL): raw TCP, byte for byte, no check.
 * - token: the client's HTTP request head (at most 16 KiB, complete within
 *   10 s) must carry the token, as header "X-Moat-Token: <token>" or as query
 *   parameter "moat_token=<token>" of the request-target (compared byte for
 *   byte, not percent-decoded, in constant time). Otherwise the client gets a
 *   JSON 401 and the connection is closed. Once admitted, the buffered bytes
 *   go to the sandbox unchanged (token included: it is the sandbox's own
 *   secret) and the connection is spliced both ways, so a WebSocket upgrade
 *   simply flows through.
 *   The check is made ONCE PER TCP CONNECTION: later keep-alive requests on
 *   an admitted connection are not looked at (they are opaque bytes to the
 *   tunnel). A client that may share a connection between users must not
 *   rely on the tunnel to tell them apart.
 *
 * Token-mode replies of the tunnel itself, each followed by closing:
 *   400 bad_request (unparsable request line), 401 unauthorized,
 *   408 request_timeout (head not complete in 10 s: slow-loris),
 *   431 headers_too_large (head over 16 KiB), 502 sandbox_unreachable (nothing
 *   accepts on the port), 504 timeout (the sandbox did not accept in 10 s).
 * In public mode the tunnel has no protocol to speak: the client is closed.
 *
 * Limits (each a defence against one client exhausting moatd): at most 256
 * connections per tunnel at once (further ones are accepted and closed at
 * once, so the backlog does not fill); at most about 1 MiB queued towards
 * either side of a connection: reading from the faster side stops until the
 * slower one drains below 256 KiB.
 *
 * Half-close is forwarded: end of stream from one side becomes
 * shutdown(SHUT_WR) towards the other once its queued bytes are written; the
 * connection is freed when both directions are done or either side fails.
 *
 * Everything runs on the event_base given to moat_tunnel_open, on its thread.
 * Writes may hit a peer that has gone: the process must ignore SIGPIPE (moatd
 * does, in main.c). moat_netns_init() must have been called. */
#pragma once
#include <event2/event.h>
#include <stdint.h>

#include "../common/error.h"

/* The limits above, exposed for tests and documentation. */
#define MOAT_TUNNEL_MAX_CONNECTIONS 256
#define MOAT_TUNNEL_HEAD_MAX (16 * 1024)
#define MOAT_TUNNEL_HEAD_TIMEOUT_SECONDS 10
#define MOAT_TUNNEL_QUEUE_HIGH (1024 * 1024)
#define MOAT_TUNNEL_QUEUE_LOW (256 * 1024)

struct moat_tunnel;

struct moat_tunnel_options {
        const char *bind_address; /* host address to listen on: "127.0.0.1", "::1", "0.0.0.0" */
        int netns_fd;             /* the sandbox's network namespace (borrowed; the tunnel dup()s it) */
        uint16_t sandbox_port;    /* forwarded to 127.0.0.1:<port> inside that namespace */
        const char *token;        /* NULL = public port: raw TCP, no check */
        unsigned head_timeout_ms; /* token mode: time allowed for the request head; 0 = 10 s */
};

/* Listen on options->bind_address, on an ephemeral port (backlog 128). On
 * success *ret owns the tunnel (free with moat_tunnel_close); on failure *ret
 * is untouched and *err says why (invalid_argument for a bad address, port
 * 0, or a token that is empty, over 256 bytes or not printable ASCII). */
int moat_tunnel_open(struct event_base *base, const struct moat_tunnel_options *options,
                     struct moat_tunnel **ret, struct moat_error **err);

/* The host port bound (host byte order). */
uint16_t moat_tunnel_host_port(const struct moat_tunnel *tunnel);

/* Bytes handed on so far, over every connection: client to sandbox (request
 * head included) and sandbox to client. The tunnel's own error replies are
 * not counted. */
void moat_tunnel_bytes(const struct moat_tunnel *tunnel, uint64_t *to_sandbox, uint64_t *from_sandbox);

/* Connections open now (mid-handshake ones included). */
unsigned moat_tunnel_connection_count(const struct moat_tunnel *tunnel);

/* Bytes queued in the tunnel now, both directions of every connection: what
 * the tunnel holds in memory for its clients (for tests of the bound). */
uint64_t moat_tunnel_queued_bytes(const struct moat_tunnel *tunnel);

/* Stop listening, close every connection now (queued bytes are dropped,
 * connections mid-handshake included) and free everything. Accepts NULL. */
void moat_tunnel_close(struct moat_tunnel *tunnel);
