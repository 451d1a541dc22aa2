package udpproxy

// Len returns the number of sessions in the listener's table.
func (l *Listener) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.table)
}
