package sfc

// PumpCounts tells the tests what the client's event pulls did: how many blocking C calls
// (sfc_client_next_event, sfc_watch_next) returned, and how many of them delivered an event.
func PumpCounts(c *Client) (pulls, delivered uint64) {
	return c.h.pulls.Load(), c.h.delivered.Load()
}
