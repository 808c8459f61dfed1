// A Go HTTP client (net/http, as containerd, crane and regclient use) for the end-to-end
// tests: sends one request whose body is `size` bytes of 'a', streamed (never held in
// memory), and prints what came back as one JSON line:
//
//	{"status":413,"connection":"close","body":"{...}","sent":1234567}
//
// or {"error":"..."} when the client got no answer (a reset connection).
//
// Usage: go-client METHOD URL SIZE [-length known|chunked] [-header "Name: value"]...
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
)

type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

// letters reads as `left` bytes of 'a' and counts what was read.
type letters struct {
	left int64
	sent int64
}

func (l *letters) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, io.EOF
	}
	n := int64(len(p))
	if n > l.left {
		n = l.left
	}
	for i := int64(0); i < n; i++ {
		p[i] = 'a'
	}
	l.left -= n
	l.sent += n
	return int(n), nil
}

func main() {
	length := flag.String("length", "known", "known: send Content-Length; chunked: do not")
	var headers headerList
	flag.Var(&headers, "header", "a request header, Name: value (repeatable)")
	flag.Parse()
	if flag.NArg() != 3 {
		fmt.Fprintln(os.Stderr, "usage: go-client [-length known|chunked] [-header H]... METHOD URL SIZE")
		os.Exit(2)
	}
	size, err := strconv.ParseInt(flag.Arg(2), 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad size:", err)
		os.Exit(2)
	}
	body := &letters{left: size}
	request, err := http.NewRequest(flag.Arg(0), flag.Arg(1), body)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if *length == "known" {
		request.ContentLength = size
	} else {
		request.ContentLength = -1
	}
	for _, header := range headers {
		name, value, _ := strings.Cut(header, ":")
		request.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	out := json.NewEncoder(os.Stdout)
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		_ = out.Encode(map[string]any{"error": err.Error(), "sent": body.sent})
		return
	}
	defer response.Body.Close()
	text, err := io.ReadAll(response.Body)
	if err != nil {
		_ = out.Encode(map[string]any{"error": "reading the answer: " + err.Error(), "status": response.StatusCode})
		return
	}
	_ = out.Encode(map[string]any{
		"status":     response.StatusCode,
		"connection": response.Header.Get("Connection"),
		"retryAfter": response.Header.Get("Retry-After"),
		"body":       string(text),
		"sent":       body.sent,
		"closed":     response.Close,
	})
}
