// ws-go-tls: the Go side of the kernel matrix's Go crypto/tls scenarios
// (`ws-scenario check --go-tls`). One static binary, built per VM
// architecture by `cargo xtask vm` with Debian's Go and gorilla/websocket
// (GOPATH mode, offline), so the VMs need nothing else: its certificate is
// made in memory at start.
//
//	ws-go-tls server close|goaway|ping|wrapped   prints "READY <port>", serves wss:// on 127.0.0.1
//	ws-go-tls client PORT http10|answer|silent
//	ws-go-tls bench PORT WRITES ECHOES   one wss:// connection, timed (the bench lab)
//
// server close: closes right after the upgrade, in (*hub).drop. goaway:
// sends close 1001 "restarting", reads until the client's answer, then
// closes. ping: pings every 300 ms and closes when no pong came in 1.5 s.
// client http10: an HTTP/1.0 upgrade, then reads until the server closes.
// answer: HTTP/1.1, echoes a close frame it gets. silent: HTTP/1.1,
// answers nothing (pings included).
//
// server wrapped: TLS over a wrapping net.Conn (the first field of
// proxyConn points at a bufio.Reader, as PROXY-protocol wrappers have),
// whose third word, its buffer's capacity, is the fd of the connection
// accepted before it: a tls.Conn walked as if over a *net.TCPConn would
// land on that other socket. The first upgraded connection waits; the
// second sends close 1001, reads the client's answer, closes; then the
// first is closed.
//
// bench: the Go server of BENCHMARKS.md section 7 (wstrace-bench
// tls_cost.rs): the upgrade, a burst of WRITES 16-byte frames (one
// (*Conn).Write each), the client's mark, ECHOES echoes ((*Conn).Read +
// (*Conn).Write); prints "RESULT <CPU ns per write> <CPU ns per echo>"
// (the process's user+system time, getrusage).
//
// Every client closes its socket only
// after the server's FIN (it reads the TCP connection under TLS to its
// end), so the server is the first closer.
//
// `cargo xtask vm` also builds it stripped (`-ldflags=-s -w`: no symbol
// table, no DWARF) as ws-go-tls-stripped, beside it.
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

type hub struct {
	mode string
	// wrapped: upgrades so far, and the first one's release.
	upgrades int32
	second   chan struct{}
}

var upgrader = websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}

//go:noinline
func (h *hub) drop(c *websocket.Conn) { c.Close() }

func (h *hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	if h.mode == "ping" {
		// A read deadline as heartbeat: pings every 300 ms, no pong by
		// 1.5 s and the read fails, the server closes.
		c.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
		go func() {
			for i := 0; i < 5; i++ {
				if c.WriteControl(websocket.PingMessage, []byte("hb"), time.Now().Add(time.Second)) != nil {
					return
				}
				time.Sleep(300 * time.Millisecond)
			}
		}()
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				break
			}
		}
	}
	goaway := h.mode == "goaway"
	if h.mode == "wrapped" {
		if atomic.AddInt32(&h.upgrades, 1) == 1 {
			<-h.second
		} else {
			defer close(h.second)
			goaway = true
		}
	}
	if goaway {
		msg := websocket.FormatCloseMessage(1001, "restarting")
		c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				break
			}
		}
	}
	h.drop(c)
}

// A fresh self-signed P-256 certificate for localhost.
func certificate() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// A wrapping conn, laid out as PROXY-protocol wrappers are: a pointer to
// a bufio.Reader first.
type proxyConn struct {
	r *bufio.Reader
	net.Conn
}

// Wraps each accepted conn in a proxyConn whose reader's capacity is the
// fd of the conn accepted before it.
type wrapListener struct {
	net.Listener
	lastFd int
}

func (l *wrapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	fd := 0
	if raw, err := c.(*net.TCPConn).SyscallConn(); err == nil {
		raw.Control(func(f uintptr) { fd = int(f) })
	}
	size := l.lastFd
	if size < 16 {
		size = 16
	}
	l.lastFd = fd
	return &proxyConn{r: bufio.NewReaderSize(c, size), Conn: c}, nil
}

func server(mode string) error {
	cert, err := certificate()
	if err != nil {
		return err
	}
	if mode == "wrapped" {
		// The sockets get fds of at least 16 (bufio's smallest buffer).
		for i := 0; i < 16; i++ {
			if _, err := os.Open("/dev/null"); err != nil {
				return err
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("READY %d\n", ln.Addr().(*net.TCPAddr).Port)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	srv := &http.Server{
		Handler:   &hub{mode: mode, second: make(chan struct{})},
		TLSConfig: cfg,
		// HTTP/1.1 only: a WebSocket upgrade has no HTTP/2 form here.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	if mode == "wrapped" {
		return srv.Serve(tls.NewListener(&wrapListener{Listener: ln}, cfg))
	}
	return srv.ServeTLS(ln, "", "")
}

// The process's CPU time (user + system) in ns.
func cpuNs() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func bench(port string, writes, echoes int) error {
	cert, err := certificate()
	if err != nil {
		return err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:"+port, &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		return err
	}
	fmt.Println("READY")
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 4096)
	head := []byte{}
	for !strings.Contains(string(head), "\r\n\r\n") {
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("no request: %w", err)
		}
		head = append(head, buf[:n]...)
	}
	if _, err := c.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")); err != nil {
		return err
	}
	frame := append([]byte{0x82, 14}, []byte(strings.Repeat("b", 14))...)
	t0 := cpuNs()
	for i := 0; i < writes; i++ {
		if _, err := c.Write(frame); err != nil {
			return err
		}
	}
	t1 := cpuNs()
	if _, err := c.Read(buf[:64]); err != nil { // the client's "burst read" mark
		return err
	}
	t2 := cpuNs()
	for i := 0; i < echoes; i++ {
		n, err := c.Read(buf[:64])
		if err != nil {
			return err
		}
		if _, err := c.Write(buf[:n]); err != nil {
			return err
		}
	}
	t3 := cpuNs()
	fmt.Printf("RESULT %d %d\n", (t1-t0)/int64(writes), (t3-t2)/int64(echoes))
	return nil
}

func client(port, mode string) error {
	raw, err := net.DialTimeout("tcp", "127.0.0.1:"+port, 10*time.Second)
	if err != nil {
		return err
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
	version := "HTTP/1.1"
	if mode == "http10" {
		version = "HTTP/1.0"
	}
	req := "GET /ws " + version + "\r\nHost: localhost\r\nConnection: Upgrade\r\n" +
		"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Sec-WebSocket-Version: 13\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	status, err := br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the status line: %w", err)
	}
	if !strings.HasPrefix(status, "HTTP/1.1 101 ") {
		return fmt.Errorf("no 101: %q", status)
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading the 101's head: %w", err)
		}
		if line == "\r\n" {
			break
		}
	}
	// Frames until the server's close_notify or FIN. A close frame from
	// the server (2-byte code, short payload) is echoed, masked.
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			break
		}
		n := int(hdr[1] & 0x7f)
		if n > 125 {
			return fmt.Errorf("unexpected long frame")
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(br, payload); err != nil {
			break
		}
		if mode == "answer" && hdr[0] == 0x88 && n >= 2 {
			mask := []byte{1, 2, 3, 4}
			out := []byte{0x88, 0x82, mask[0], mask[1], mask[2], mask[3],
				payload[0] ^ mask[0], payload[1] ^ mask[1]}
			if _, err := c.Write(out); err != nil {
				return err
			}
		}
	}
	// The TCP connection under TLS to its end (the server's FIN): only
	// then does the client close, so the server closed first.
	io.Copy(io.Discard, raw)
	return nil
}

func main() {
	var err error
	switch {
	case len(os.Args) == 3 && os.Args[1] == "server":
		err = server(os.Args[2])
	case len(os.Args) == 4 && os.Args[1] == "client":
		err = client(os.Args[2], os.Args[3])
	case len(os.Args) == 5 && os.Args[1] == "bench":
		writes, e1 := strconv.Atoi(os.Args[3])
		echoes, e2 := strconv.Atoi(os.Args[4])
		if e1 != nil || e2 != nil || writes < 1 || echoes < 1 {
			err = fmt.Errorf("bench: WRITES and ECHOES are positive numbers")
		} else {
			err = bench(os.Args[2], writes, echoes)
		}
	default:
		err = fmt.Errorf("usage: ws-go-tls server close|goaway|ping|wrapped | client PORT http10|answer|silent | bench PORT WRITES ECHOES")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ws-go-tls:", err)
		os.Exit(1)
	}
}
