package main

import (
	"fmt"
	"os"

	"github.com/lbctl/lbctl/pkg/config"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the process logger from the [log] table. Under systemd
// (JOURNAL_STREAM set) the console format drops its timestamp, since
// journald stamps every line itself; JSON keeps it for log shippers.
func newLogger(c config.Log) (*zap.Logger, zap.AtomicLevel, error) {
	level, err := zap.ParseAtomicLevel(c.Level)
	if err != nil {
		return nil, level, fmt.Errorf("log.level: %w", err)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	enc.TimeKey = "ts"
	var encoder zapcore.Encoder
	switch c.Format {
	case "console":
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
		enc.EncodeDuration = zapcore.StringDurationEncoder
		if os.Getenv("JOURNAL_STREAM") != "" {
			enc.TimeKey = ""
		}
		encoder = zapcore.NewConsoleEncoder(enc)
	default:
		encoder = zapcore.NewJSONEncoder(enc)
	}
	core := zapcore.NewCore(encoder, zapcore.Lock(os.Stderr), level)
	return zap.New(core, zap.ErrorOutput(zapcore.Lock(os.Stderr))), level, nil
}
