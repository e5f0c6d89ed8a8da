// Chat for the world conn-handler (WASI 0.3, async), in Go: a line-based
// chat room. Every line a client sends goes to every other connected
// client, prefixed with the sender's address; a client that joins is
// greeted with `* welcome <address>, <n> in the room`. One instance serves
// every client, so the room is an ordinary package variable.
//
// Each connection has two goroutines: one reads the client's lines and
// hands them to the others' mailboxes (buffered channels), one writes its
// own mailbox to the client. A goroutine parked on another connection's
// channel is woken like any goroutine: sockgate's runtime hook lets the
// scheduler run it inside whichever connection's callback is current.
package export_sockgate_gateway_handler

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"

	"wit_component/sockgate_gateway_connection"
	"wit_component/sockgate_gateway_handler"
	"wit_component/wasi_sockets_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Lines queued for one client before further lines to it are dropped: a
// client that does not read must not make the room buffer without bound.
const queuePerClient = 256

// Longest line accepted; longer input is cut into pieces of this size, so
// a client without newlines cannot grow the instance's memory.
const maxLine = 4096

// room maps connection ids to the mailboxes of the clients in the room.
var (
	roomMu sync.Mutex
	room   = map[uint64]chan []byte{}
)

// Handle is called once per client connection: it greets the client, puts
// it in the room, and returns the stream its mailbox is written to.
func Handle(id uint64, rx *witTypes.StreamReader[uint8]) *witTypes.StreamReader[uint8] {
	peer := describe(id)
	mailbox := make(chan []byte, queuePerClient)
	roomMu.Lock()
	room[id] = mailbox
	online := len(room)
	roomMu.Unlock()
	// The welcome line also tells the client it is in the room now.
	mailbox <- []byte(fmt.Sprintf("* welcome %s, %d in the room\n", peer, online))
	fmt.Printf("%s: joined (connection %d)\n", peer, id)

	tx, out := sockgate_gateway_handler.MakeStreamU8()
	go relay(id, peer, rx, mailbox)
	go deliver(mailbox, tx)
	return out
}

// relay splits the client's bytes into lines and broadcasts them until the
// client closes its sending side, then takes the client out of the room.
func relay(id uint64, peer string, rx *witTypes.StreamReader[uint8], mailbox chan []byte) {
	defer rx.Drop()
	prefix := []byte(peer + ": ")
	var pending []byte
	buf := make([]byte, 4096)
	for !rx.WriterDropped() {
		n := rx.Read(buf)
		pending = append(pending, buf[:n]...)
		for {
			end := bytes.IndexByte(pending, '\n')
			if end < 0 {
				break
			}
			broadcast(id, concat(prefix, pending[:end+1]))
			pending = pending[end+1:]
		}
		if len(pending) >= maxLine {
			broadcast(id, concat(prefix, pending, []byte("\n")))
			pending = nil
		}
	}
	roomMu.Lock()
	delete(room, id)
	// Closing the mailbox ends the client's stream once it is drained.
	close(mailbox)
	roomMu.Unlock()
	fmt.Printf("%s: left\n", peer)
}

// deliver writes the client's mailbox to it until the mailbox is closed or
// the client stops reading, then closes the client's stream.
func deliver(mailbox chan []byte, tx *witTypes.StreamWriter[uint8]) {
	defer tx.Drop()
	for line := range mailbox {
		if tx.WriteAll(line) < uint32(len(line)) {
			return // the client went away; relay sees its end of stream
		}
	}
}

// broadcast queues line for every client but the sender, dropping it for
// clients whose mailbox is full.
func broadcast(from uint64, line []byte) {
	roomMu.Lock()
	defer roomMu.Unlock()
	for id, mailbox := range room {
		if id == from {
			continue
		}
		select {
		case mailbox <- line:
		default:
		}
	}
}

func concat(parts ...[]byte) []byte {
	return bytes.Join(parts, nil)
}

// describe names the client by its address, as Rust's SocketAddr prints
// it, or by the connection id once the connection is gone.
func describe(id uint64) string {
	info := sockgate_gateway_connection.Info(id)
	if info.IsNone() {
		return fmt.Sprintf("connection %d", id)
	}
	peer := info.Some().Peer
	if peer.Tag() == wasi_sockets_types.IpSocketAddress_Ipv4 {
		v4 := peer.Ipv4()
		a := v4.Address
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{a.F0, a.F1, a.F2, a.F3}), v4.Port).String()
	}
	v6 := peer.Ipv6()
	a := v6.Address
	var raw [16]byte
	for i, group := range []uint16{a.F0, a.F1, a.F2, a.F3, a.F4, a.F5, a.F6, a.F7} {
		raw[2*i], raw[2*i+1] = byte(group>>8), byte(group)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(raw), v6.Port).String()
}
