// A WebSocket server (101, then close on an HTTP/1.0 upgrade) whose close
// happens on a cold path: GCC -O2 splits `ws::conn::finish` into a hot part
// and `ws::conn::finish(int, bool) [clone .cold]`, and `main` into `main` and
// `main.cold`, and calls the handler through std::function's `_M_invoke`.
// The user-stack test compares wstrace's frames with the symbol table (what
// gdb prints). Usage: cold_close; prints `READY <port>`.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <functional>

namespace ws {
namespace conn {

__attribute__((noinline, cold)) void complain(const char *why) {
    std::fprintf(stderr, "cold_close: %s\n", why);
}

__attribute__((noinline)) void finish(int fd, bool http10) {
    if (http10) {
        // Calls a cold function: GCC moves this block to finish.cold.
        complain("HTTP/1.0 upgrade, closing");
        int rc = close(fd);
        // Work after the close: the close is a call, not a tail jump.
        complain(rc == 0 ? "closed" : "close failed");
        return;
    }
    char buf[512];
    while (read(fd, buf, sizeof buf) > 0) {
    }
    close(fd);
}

}  // namespace conn
}  // namespace ws

static const char k101[] =
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

int main() {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t n = sizeof a;
    if (bind(l, (sockaddr *)&a, n) || listen(l, 16) || getsockname(l, (sockaddr *)&a, &n)) {
        std::perror("listen");
        return 1;
    }
    std::printf("READY %d\n", ntohs(a.sin_port));
    std::fflush(stdout);
    unsigned served = 0;
    std::function<void(int, bool)> handler = [&served](int fd, bool http10) {
        ws::conn::finish(fd, http10);
        served++;
    };
    for (;;) {
        int c = accept(l, nullptr, nullptr);
        if (c < 0) continue;
        char head[4096];
        size_t got = 0;
        while (got < sizeof head - 1) {
            ssize_t r = read(c, head + got, sizeof head - 1 - got);
            if (r <= 0) break;
            got += (size_t)r;
            head[got] = 0;
            if (std::strstr(head, "\r\n\r\n")) break;
        }
        head[got] = 0;
        if (write(c, k101, sizeof k101 - 1) < 0) {
            close(c);
            continue;
        }
        handler(c, std::strstr(head, "HTTP/1.0\r\n") != nullptr);
    }
}
