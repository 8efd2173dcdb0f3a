/* A tiny static stand-in for moat-init, for the isolation-cell tests: it is
 * exec'd as PID 1 of a cell with `--control-fd <n>`, accepts connections on
 * that listening socket and serves just enough of the protocol
 * (src/common/protocol.h): HELLO -> HELLO_ACK; SPAWN -> SPAWNED, OUTPUT
 * frames, EXIT. One process at a time, no flow control, no stdin. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/protocol.h"

static uint8_t payload[MOAT_FRAME_PAYLOAD_MAX];
static struct moat_spawn_spec spec;

static int write_all(int fd, const void *data, size_t length)
{
        const uint8_t *p = data;
        while (length) {
                ssize_t n = write(fd, p, length);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return -1;
                p += n;
                length -= (size_t)n;
        }
        return 0;
}

static int read_all(int fd, void *data, size_t length)
{
        uint8_t *p = data;
        while (length) {
                ssize_t n = read(fd, p, length);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return -1;
                p += n;
                length -= (size_t)n;
        }
        return 0;
}

static int send_frame(int fd, uint16_t type, uint16_t flags, uint32_t handle, uint32_t aux, const void *data,
                      uint32_t length)
{
        uint8_t header[MOAT_FRAME_HEADER_SIZE];
        struct moat_frame_header h = { .length = length, .type = type, .flags = flags, .handle = handle, .aux = aux };

        moat_frame_header_encode(&h, header);
        if (write_all(fd, header, sizeof(header)) < 0)
                return -1;
        return length ? write_all(fd, data, length) : 0;
}

static int run(int connection, uint32_t cookie)
{
        int out[2], err[2];
        pid_t pid;
        uint8_t buffer[MOAT_OUTPUT_CHUNK_MAX], exit_payload[8];
        int status, open_streams = 2;

        if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
                return -1;
        pid = fork();
        if (pid < 0)
                return -1;
        if (pid == 0) {
                dup2(out[1], 1);
                dup2(err[1], 2);
                setsid();
                if (spec.cwd[0])
                        if (chdir(spec.cwd) < 0)
                                _exit(126);
                execvpe(spec.argv[0], (char *const *)spec.argv, (char *const *)spec.env);
                _exit(127);
        }
        close(out[1]);
        close(err[1]);
        send_frame(connection, MOAT_FRAME_SPAWNED, 0, cookie, (uint32_t)pid, NULL, 0);
        struct pollfd p[2] = { { .fd = out[0], .events = POLLIN }, { .fd = err[0], .events = POLLIN } };
        while (open_streams) {
                if (poll(p, 2, -1) < 0 && errno != EINTR)
                        return -1;
                for (int i = 0; i < 2; i++) {
                        if (p[i].fd < 0 || !p[i].revents)
                                continue;
                        ssize_t n = read(p[i].fd, buffer, sizeof(buffer));
                        if (n > 0) {
                                send_frame(connection, MOAT_FRAME_OUTPUT, (uint16_t)(i + 1), cookie, 0, buffer,
                                           (uint32_t)n);
                        } else {
                                close(p[i].fd);
                                p[i].fd = -1;
                                open_streams--;
                        }
                }
        }
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        moat_put_u32(exit_payload, (uint32_t)(WIFEXITED(status) ? WEXITSTATUS(status) : -1));
        moat_put_u32(exit_payload + 4, (uint32_t)(WIFSIGNALED(status) ? WTERMSIG(status) : 0));
        return send_frame(connection, MOAT_FRAME_EXIT, 0, cookie, 0, exit_payload, 8);
}

static void serve(int connection)
{
        uint8_t header[MOAT_FRAME_HEADER_SIZE];
        struct moat_frame_header h;

        while (read_all(connection, header, sizeof(header)) == 0) {
                if (moat_frame_header_decode(header, &h) < 0 || read_all(connection, payload, h.length) < 0)
                        return;
                if (h.type == MOAT_FRAME_HELLO) {
                        uint8_t ack[8];
                        moat_put_u32(ack, MOAT_PROTOCOL_VERSION);
                        moat_put_u32(ack + 4, 0);
                        send_frame(connection, MOAT_FRAME_HELLO_ACK, 0, 0, 0, ack, 8);
                } else if (h.type == MOAT_FRAME_SPAWN) {
                        if (moat_spawn_decode(payload, h.length, &spec) < 0 || run(connection, h.aux) < 0) {
                                const char message[] = "\0\0\0\0spawn failed";
                                send_frame(connection, MOAT_FRAME_SPAWN_FAILED, 0, 0, h.aux, message,
                                           sizeof(message) - 1);
                        }
                }
        }
}

int main(int argc, char **argv)
{
        int listener;

        if (argc != 3 || strcmp(argv[1], "--control-fd") != 0) {
                fprintf(stderr, "usage: moat-init --control-fd N\n");
                return 2;
        }
        listener = atoi(argv[2]);
        signal(SIGPIPE, SIG_IGN);
        for (;;) {
                int connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
                if (connection < 0) {
                        if (errno == EINTR)
                                continue;
                        return 1;
                }
                serve(connection);
                close(connection);
                while (waitpid(-1, NULL, WNOHANG) > 0)
                        ;
        }
}
