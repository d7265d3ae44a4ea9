package telemetry

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"
)

// Config is the modules.telemetry section of meshd.yaml.
type Config struct {
	AccessLog AccessLogConfig `mapstructure:"accessLog"`
	Receiver  ReceiverConfig  `mapstructure:"receiver"`
	Metrics   MetricsConfig   `mapstructure:"metrics"`
	Tracing   TracingConfig   `mapstructure:"tracing"`
	FileSink  FileSinkConfig  `mapstructure:"fileSink"`
	// SinkQueue bounds each sink's backlog.
	SinkQueue int `mapstructure:"sinkQueue" doc:"batches of access-log records each sink may have waiting; a batch that does not fit is dropped and counted"`
}

// AccessLogConfig shapes the access-log config pushed to proxies.
type AccessLogConfig struct {
	Cluster       string        `mapstructure:"cluster" doc:"cluster in the proxies' bootstrap that reaches meshd's xDS port; access logs are streamed to meshd over it (Istio's bootstrap calls it xds-grpc)"`
	FlushInterval time.Duration `mapstructure:"flushInterval" doc:"how long a proxy buffers access-log entries before sending them"`
	BufferBytes   int           `mapstructure:"bufferBytes" doc:"bytes of access-log entries a proxy buffers before sending them"`
}

// ReceiverConfig bounds what the access-log service accepts.
type ReceiverConfig struct {
	MaxStreams              int `mapstructure:"maxStreams" json:"maxStreams" doc:"concurrent access-log streams over all connections; more are refused with RESOURCE_EXHAUSTED (each Envoy opens one per worker thread and log)"`
	MaxStreamsPerConnection int `mapstructure:"maxStreamsPerConnection" json:"maxStreamsPerConnection" doc:"concurrent access-log streams on one client connection; more are refused with RESOURCE_EXHAUSTED"`
	MaxMessageBytes         int `mapstructure:"maxMessageBytes" json:"maxMessageBytes" doc:"largest access-log message accepted; larger ones are dropped and counted (gRPC itself refuses more than 4 MiB)"`
	MaxEntriesPerMessage    int `mapstructure:"maxEntriesPerMessage" json:"maxEntriesPerMessage" doc:"entries read from one access-log message; the rest are dropped and counted"`
}

// MetricsConfig bounds the request metrics.
type MetricsConfig struct {
	MaxSeries         int            `mapstructure:"maxSeries" doc:"label combinations each request metric (istio_*) may hold; observations beyond go to its __overflow__ series and are counted in meshd_telemetry_series_overflow_total"`
	SeriesLimits      map[string]int `mapstructure:"seriesLimits" doc:"per-metric overrides of maxSeries, by metric name (istio_requests_total: 10000)"`
	SeriesIdleTimeout time.Duration  `mapstructure:"seriesIdleTimeout" doc:"a series without observations for this long is deleted, freeing room under its limit; 0 keeps series forever"`
}

// TracingConfig is the mesh-wide tracing pushed to proxies.
type TracingConfig struct {
	OTelAddress     string               `mapstructure:"otelAddress" doc:"host:port of the OpenTelemetry collector's OTLP/gRPC receiver that proxies send spans to; empty turns tracing off"`
	SamplingPercent float64              `mapstructure:"samplingPercent" doc:"percentage of requests a proxy starts a trace for (0 to 100); requests that arrive with a sampled trace are always traced"`
	CustomTags      map[string]CustomTag `mapstructure:"customTags" doc:"span tags by name, each with exactly one of literal, header (request header) or environment (proxy environment variable), and an optional default"`
}

// CustomTag is one tracing tag. Exactly one source is set.
type CustomTag struct {
	Literal     string `mapstructure:"literal"`
	Header      string `mapstructure:"header"`
	Environment string `mapstructure:"environment"`
	Default     string `mapstructure:"default"`
}

// FileSinkConfig configures the built-in sink that writes access logs as
// JSON lines.
type FileSinkConfig struct {
	Path       string `mapstructure:"path" doc:"file the access logs are written to as JSON lines (mode 0600); empty turns the file sink off"`
	MaxBytes   int64  `mapstructure:"maxBytes" doc:"size at which the file is rotated to <path>.1 (older files shift to .2, .3, ...)"`
	MaxBackups int    `mapstructure:"maxBackups" doc:"rotated files kept besides the current one; older ones are deleted"`
}

// Default returns the defaults: Istio's bootstrap cluster name, limits
// sized for a mesh of a few thousand proxies, tracing off.
func Default() *Config {
	return &Config{
		AccessLog: AccessLogConfig{Cluster: "xds-grpc", FlushInterval: time.Second, BufferBytes: 16 << 10},
		Receiver: ReceiverConfig{
			MaxStreams:              20000,
			MaxStreamsPerConnection: 64,
			MaxMessageBytes:         1 << 20,
			MaxEntriesPerMessage:    10000,
		},
		Metrics:   MetricsConfig{MaxSeries: 2000, SeriesLimits: map[string]int{}, SeriesIdleTimeout: time.Hour},
		Tracing:   TracingConfig{SamplingPercent: 1, CustomTags: map[string]CustomTag{}},
		FileSink:  FileSinkConfig{MaxBytes: 100 << 20, MaxBackups: 5},
		SinkQueue: 64,
	}
}

// limit returns the series limit of a metric.
func (c *MetricsConfig) limit(metric string) int {
	if n, ok := c.SeriesLimits[metric]; ok {
		return n
	}
	return c.MaxSeries
}

// Validate checks what decoding cannot.
func (c *Config) Validate() error {
	const p = "modules.telemetry."
	var errs []error
	if c.AccessLog.Cluster == "" {
		errs = append(errs, errors.New(p+"accessLog.cluster: must not be empty"))
	}
	if c.AccessLog.FlushInterval < time.Millisecond || c.AccessLog.BufferBytes <= 0 {
		errs = append(errs, errors.New(p+"accessLog: flushInterval must be at least 1ms and bufferBytes positive"))
	}
	r := c.Receiver
	if r.MaxStreams <= 0 || r.MaxStreamsPerConnection <= 0 || r.MaxMessageBytes <= 0 || r.MaxEntriesPerMessage <= 0 {
		errs = append(errs, errors.New(p+"receiver: every limit must be positive"))
	}
	if c.Metrics.MaxSeries < 1 {
		errs = append(errs, errors.New(p+"metrics.maxSeries: must be at least 1"))
	}
	names := requestMetricNames()
	for name, n := range c.Metrics.SeriesLimits {
		switch {
		case !slices.Contains(names, name):
			errs = append(errs, fmt.Errorf(p+"metrics.seriesLimits.%s: no such metric (one of %v)", name, names))
		case n < 1:
			errs = append(errs, fmt.Errorf(p+"metrics.seriesLimits.%s: must be at least 1", name))
		}
	}
	if c.Metrics.SeriesIdleTimeout < 0 {
		errs = append(errs, errors.New(p+"metrics.seriesIdleTimeout: must not be negative"))
	}
	t := c.Tracing
	if t.OTelAddress != "" {
		host, port, err := net.SplitHostPort(t.OTelAddress)
		if n, perr := strconv.ParseUint(port, 10, 16); err != nil || host == "" || perr != nil || n == 0 {
			errs = append(errs, fmt.Errorf(p+"tracing.otelAddress: %q is not host:port", t.OTelAddress))
		}
	}
	if t.SamplingPercent < 0 || t.SamplingPercent > 100 {
		errs = append(errs, fmt.Errorf(p+"tracing.samplingPercent: %v is not between 0 and 100", t.SamplingPercent))
	}
	for name, tag := range t.CustomTags {
		n := 0
		for _, s := range []string{tag.Literal, tag.Header, tag.Environment} {
			if s != "" {
				n++
			}
		}
		if name == "" || n != 1 {
			errs = append(errs, fmt.Errorf(p+"tracing.customTags.%s: set exactly one of literal, header, environment", name))
		}
	}
	if c.FileSink.Path != "" && (c.FileSink.MaxBytes <= 0 || c.FileSink.MaxBackups < 0) {
		errs = append(errs, errors.New(p+"fileSink: maxBytes must be positive and maxBackups not negative"))
	}
	if c.SinkQueue <= 0 {
		errs = append(errs, errors.New(p+"sinkQueue: must be positive"))
	}
	return errors.Join(errs...)
}
