package metrics

// Direction is the direction label of lbctl_bytes_total and
// lbctl_udp_datagrams_total.
type Direction uint8

const (
	In  Direction = iota // client to backend
	Out                  // backend to client
)

// String returns the label value: "in" or "out".
func (d Direction) String() string {
	if d == In {
		return "in"
	}
	return "out"
}
