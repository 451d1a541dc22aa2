package bgp

import (
	"sort"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapLogger passes GoBGP's log lines to lbctl's zap logger. GoBGP logs its
// own view of every session event at info level; lbctl logs the state
// changes it cares about itself (bgp.go), so GoBGP's info lines go to debug
// and only its warnings and errors keep their level.
type zapLogger struct{ l *zap.Logger }

func newLogger(l *zap.Logger) *zapLogger {
	return &zapLogger{l: l.With(zap.String("component", "gobgp"))}
}

func (z *zapLogger) log(level zapcore.Level, msg string, fields gobgplog.Fields) {
	if ce := z.l.Check(level, msg); ce != nil {
		keys := make([]string, 0, len(fields))
		for k := range fields {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		zf := make([]zap.Field, 0, len(keys))
		for _, k := range keys {
			zf = append(zf, zap.Any(k, fields[k]))
		}
		ce.Write(zf...)
	}
}

func (z *zapLogger) Panic(msg string, f gobgplog.Fields) { z.log(zapcore.ErrorLevel, msg, f) }
func (z *zapLogger) Fatal(msg string, f gobgplog.Fields) { z.log(zapcore.ErrorLevel, msg, f) }
func (z *zapLogger) Error(msg string, f gobgplog.Fields) { z.log(zapcore.ErrorLevel, msg, f) }
func (z *zapLogger) Warn(msg string, f gobgplog.Fields)  { z.log(zapcore.WarnLevel, msg, f) }
func (z *zapLogger) Info(msg string, f gobgplog.Fields)  { z.log(zapcore.DebugLevel, msg, f) }
func (z *zapLogger) Debug(msg string, f gobgplog.Fields) { z.log(zapcore.DebugLevel, msg, f) }

// SetLevel is GoBGP's way to change its level at run time; lbctl's logger
// decides.
func (z *zapLogger) SetLevel(gobgplog.LogLevel) {}

// GetLevel tells GoBGP whether to build its debug lines at all.
func (z *zapLogger) GetLevel() gobgplog.LogLevel {
	if z.l.Core().Enabled(zapcore.DebugLevel) {
		return gobgplog.DebugLevel
	}
	return gobgplog.InfoLevel
}
