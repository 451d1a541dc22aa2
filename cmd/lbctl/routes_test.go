package main

import (
	"testing"

	"github.com/lbctl/lbctl/pkg/server"
)

func TestPoolColumn(t *testing.T) {
	for _, tc := range []struct {
		l    server.ListenerStatus
		want string
	}{
		{server.ListenerStatus{Pool: "web"}, "web"},
		{server.ListenerStatus{Pool: "fallback", Routes: []server.RouteStatus{{Pool: "api"}, {Pool: "shop"}, {Pool: "api"}}},
			"fallback +routes api,shop"},
		{server.ListenerStatus{Routes: []server.RouteStatus{{Pool: "api"}}}, "routes api"},
	} {
		if got := poolColumn(tc.l); got != tc.want {
			t.Errorf("poolColumn(%+v) = %q, want %q", tc.l, got, tc.want)
		}
	}
}
