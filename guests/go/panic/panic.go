// A Go guest that panics when asked, for the test that a Go panic ends its
// instance cleanly and says why (tests/e2e/go_guests.rs): it echoes lines,
// and on the line `panic` panics with a message naming the connection.
// World conn-handler (async).
package export_sockgate_gateway_handler

import (
	"bytes"
	"fmt"

	"wit_component/sockgate_gateway_handler"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Handle is called once per client connection.
func Handle(id uint64, rx *witTypes.StreamReader[uint8]) *witTypes.StreamReader[uint8] {
	tx, out := sockgate_gateway_handler.MakeStreamU8()
	go serve(id, rx, tx)
	return out
}

// serve echoes lines until the client closes, or panics on `panic`.
func serve(id uint64, rx *witTypes.StreamReader[uint8], tx *witTypes.StreamWriter[uint8]) {
	defer rx.Drop()
	defer tx.Drop()
	var pending []uint8
	buf := make([]uint8, 4096)
	for !rx.WriterDropped() {
		n := rx.Read(buf)
		pending = append(pending, buf[:n]...)
		for {
			end := bytes.IndexByte(pending, '\n')
			if end < 0 {
				break
			}
			line := pending[:end+1]
			if string(line) == "panic\n" {
				explode(id)
			}
			if tx.WriteAll(line) < uint32(len(line)) {
				return
			}
			pending = pending[end+1:]
		}
	}
}

// explode panics: a function of its own (kept out of line), so that the
// trap's backtrace names it.
//
//go:noinline
func explode(id uint64) {
	panic(fmt.Sprintf("go guest asked to panic on connection %d", id))
}
