/* A WebSocket-ish server whose close happens nine calls deep, built the way
 * distro and C/C++ servers usually are: optimised, without frame pointers.
 * The stacks test compiles it with
 *   cc -O2 -g -fomit-frame-pointer -fno-optimize-sibling-calls
 * and checks that wstrace's dwarf unwind lists every ws_level_* function in
 * order, while the frame-pointer walk shows far fewer.
 *
 * Usage: deep_close PORT [exit]
 * Prints "READY <port>" once listening; serves one connection per accept:
 * reads the request head, writes the 101 and closes through the chain.
 * With "exit", the process exits right after its first close.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))

/* Written after every call, so no call is a tail call and no function is
 * folded into its caller. */
volatile int depth_seen;

NOINLINE int ws_level_9(int fd) { int r = close(fd); depth_seen = 9; return r; }
NOINLINE int ws_level_8(int fd) { int r = ws_level_9(fd); depth_seen += 8; return r; }
NOINLINE int ws_level_7(int fd) { int r = ws_level_8(fd); depth_seen += 7; return r; }
NOINLINE int ws_level_6(int fd) { int r = ws_level_7(fd); depth_seen += 6; return r; }
NOINLINE int ws_level_5(int fd) { int r = ws_level_6(fd); depth_seen += 5; return r; }
NOINLINE int ws_level_4(int fd) { int r = ws_level_5(fd); depth_seen += 4; return r; }
NOINLINE int ws_level_3(int fd) { int r = ws_level_4(fd); depth_seen += 3; return r; }
NOINLINE int ws_level_2(int fd) { int r = ws_level_3(fd); depth_seen += 2; return r; }
NOINLINE int ws_level_1(int fd) { int r = ws_level_2(fd); depth_seen += 1; return r; }

static const char RESPONSE[] =
    "HTTP/1.1 101 Switching Protocols\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/* Reads until the end of the request head (or EOF / 4 KiB). */
static void read_head(int fd) {
    char buf[4096];
    size_t have = 0;
    while (have < sizeof buf - 1) {
        ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
        if (n <= 0) return;
        have += (size_t)n;
        buf[have] = 0;
        if (strstr(buf, "\r\n\r\n")) return;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [exit]\n", argv[0]);
        return 2;
    }
    int exit_after = argc > 2 && strcmp(argv[2], "exit") == 0;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 64) != 0) {
        perror("bind/listen");
        return 1;
    }
    socklen_t len = sizeof a;
    getsockname(ls, (struct sockaddr *)&a, &len);
    printf("READY %d\n", ntohs(a.sin_port));
    fflush(stdout);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) continue;
        read_head(fd);
        if (write(fd, RESPONSE, sizeof RESPONSE - 1) < 0) {
            close(fd);
            continue;
        }
        ws_level_1(fd);
        if (exit_after) _exit(0);
    }
}
