//go:build !unix

package main

// mayConnect cannot tell off unix: try.
func mayConnect(string) bool { return true }
