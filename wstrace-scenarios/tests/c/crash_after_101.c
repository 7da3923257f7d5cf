/* A WebSocket server that crashes right after its 101, as Swoole 6.0.2
 * does: it answers one upgrade, then a handler thread dereferences NULL.
 * Built -O2 -g -fomit-frame-pointer (the crash stack needs the dwarf
 * unwind). Argument: the port (0: any), printed as `READY <port>`. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
    int fd;
    const char *subprotocol;
};

static const char RESPONSE[] =
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/* The bug: a connection without a subprotocol has none to compare. */
__attribute__((noinline)) int negotiate_subprotocol(struct conn *c) {
    return strcmp(c->subprotocol, "chat") == 0;
}

__attribute__((noinline)) static void *handle_connection(void *arg) {
    struct conn *c = arg;
    usleep(50 * 1000);
    if (negotiate_subprotocol(c))
        write(c->fd, "\x81\x02hi", 4);
    return NULL;
}

int main(int argc, char **argv) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(argc > 1 ? atoi(argv[1]) : 0),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
        getsockname(l, (struct sockaddr *)&a, &n))
        return 1;
    printf("READY %d\n", ntohs(a.sin_port));
    fflush(stdout);
    struct conn c = {.fd = accept(l, NULL, NULL), .subprotocol = NULL};
    char buf[2048];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t r = read(c.fd, buf + got, sizeof buf - 1 - got);
        if (r <= 0)
            return 1;
        got += r;
        buf[got] = 0;
        if (strstr(buf, "\r\n\r\n"))
            break;
    }
    write(c.fd, RESPONSE, sizeof RESPONSE - 1);
    pthread_t t;
    pthread_create(&t, NULL, handle_connection, &c);
    pthread_join(t, NULL);
    return 0;
}
