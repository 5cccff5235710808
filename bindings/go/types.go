package sfc

import (
	"context"
	"encoding/json"
	"time"
)

// Health is what the application reports about itself.
type Health int

const (
	Passing  Health = 0
	Warning  Health = 1
	Critical Health = 2
)

// Endpoint is a network endpoint an instance serves.
type Endpoint struct {
	Name     string `json:"name"`
	Host     string `json:"host"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
}

// API says where an instance's API is described; Kind is "openapi", "graphql" or "other".
type API struct {
	Kind string `json:"kind"`
	URL  string `json:"url"`
}

// Config holds the client settings. Zero values mean the library's defaults, and settings left
// empty fall back to the SFC_* environment variables unless IgnoreEnv is set.
type Config struct {
	// Registries are registry addresses (host:port), tried in order.
	Registries []string
	// Observer clients only look up, query and watch; they register no instance.
	Observer   bool
	Group      string
	Service    string
	InstanceID string
	Hostname   string
	// Interval between reports (default 1 s).
	Interval  time.Duration
	Endpoints []Endpoint
	Tags      []string
	Metadata  map[string]string
	Version   string
	API       *API
	// CA, Cert and Key are PEM file paths or PEM text.
	CA   string
	Cert string
	Key  string
	// InsecurePlaintext talks to a registry started with --insecure-plaintext.
	InsecurePlaintext bool
	ConnectTimeout    time.Duration
	StopTimeout       time.Duration
	// NoMetrics turns off the host and process metrics sampled into every report.
	NoMetrics bool
	// NoRuntimeMetrics turns off the Go runtime figures sent with every report (go_goroutines,
	// go_heap_bytes, go_memory_bytes, go_gc_cycles, go_gc_pauses, go_gc_pause_max_ms; see
	// Client.SetRuntimeMetrics).
	NoRuntimeMetrics bool
	IgnoreEnv        bool
	// Legacy turns on the fallback for a registry that predates protocol v1 (the original
	// service_fleet_control registry, which selects no ALPN "sfc/1"). Without it such a
	// registry is refused and sent nothing: an EventError with Code StatusProtocol and
	// RegistryCode "unsupported-version" whose message says the registry predates protocol v1.
	// With it the client reports there in the original format (one TLS connection per
	// report, one {"action":"HEALTH",...} document) and moves to v1 by itself once a report's
	// connection finds an upgraded registry. While it reports in the legacy format,
	// EventConnected has Session 0, Lookup fails with ErrUnreachable, watches deliver nothing,
	// no commands arrive and Close sends no leave. Needs TLS and a service: Start fails with ErrInvalidArgument
	// together with InsecurePlaintext or Observer.
	Legacy bool

	// OnCommand answers the registry's commands: CommandShutdown, or a name the application
	// defines. It is installed before the client connects, so no command ever finds the
	// client without it; without one, commands are answered with an error.
	//
	// It runs on a goroutine of the client, one command at a time, while events keep
	// flowing. The value it returns (marshalled to JSON) is the command's result; an error
	// fails the command with its text. A panic fails the command too. ctx is cancelled when
	// Close stops waiting for the answer (its own ctx ended) or the client is closed.
	//
	// Shutdown done right: return from the handler and let the caller of Close leave, e.g.
	// cancel the service's context in the handler and call Close in main (see the README).
	// Close waits for the command being handled to be answered, then sends the leave, so the
	// registry gets the answer first and the record ends "left". Close may also be called
	// inside the handler: the command is then answered with success (result null) at once,
	// before the leave, and the handler's own return value is dropped.
	OnCommand func(ctx context.Context, cmd Command) (any, error)
}

// CommandShutdown is the name of the registry's shutdown command (`sfc shutdown ID`).
const CommandShutdown = "shutdown"

// EventKind says what a ClientEvent reports.
type EventKind int

const (
	// EventConnected: a session with Registry is established (Session is its number).
	EventConnected EventKind = iota + 1
	// EventDisconnected: the session with Registry ended (Reason says why); the client
	// reconnects by itself.
	EventDisconnected
	// EventError: a problem the client recovers from by itself (a certificate the client
	// does not trust, a refused hello...); Err has its code and message.
	EventError
	// EventLagged: the application fell behind and Missed events were dropped.
	EventLagged
)

func (k EventKind) String() string {
	switch k {
	case EventConnected:
		return "connected"
	case EventDisconnected:
		return "disconnected"
	case EventError:
		return "error"
	case EventLagged:
		return "lagged"
	}
	return "unknown"
}

// ClientEvent is a change of the client's own connection, from Client.Events.
type ClientEvent struct {
	Kind     EventKind
	Registry string
	Session  uint64
	Reason   string
	Err      *Error
	Missed   uint64
}

// Metrics are the figures of one report.
type Metrics struct {
	Host    json.RawMessage    `json:"host"`
	Process json.RawMessage    `json:"process"`
	Runtime map[string]float64 `json:"runtime"`
	Custom  map[string]float64 `json:"custom"`
}

// Instance is an instance as the registry knows it.
type Instance struct {
	ID             string            `json:"id"`
	Group          string            `json:"group"`
	Service        string            `json:"service"`
	InstanceID     string            `json:"instance_id"`
	Hostname       string            `json:"hostname"`
	PID            uint32            `json:"pid"`
	Status         string            `json:"status"`
	OfflineReason  *string           `json:"offline_reason"`
	Health         string            `json:"health"`
	HealthNote     *string           `json:"health_note"`
	Endpoints      []Endpoint        `json:"endpoints"`
	Tags           []string          `json:"tags"`
	Metadata       map[string]string `json:"metadata"`
	Version        *string           `json:"version"`
	API            *API              `json:"api"`
	IntervalMS     uint64            `json:"interval_ms"`
	ConnectedSince *uint64           `json:"connected_since"`
	LastReportAt   *uint64           `json:"last_report_at"`
	Metrics        Metrics           `json:"metrics"`
}

// Filter selects instances; empty fields match everything.
type Filter struct {
	Group   string `json:"group,omitempty"`
	Service string `json:"service,omitempty"`
	// Status is "online", "offline" or "left".
	Status string `json:"status,omitempty"`
	// Health is "passing", "warning" or "critical".
	Health string `json:"health,omitempty"`
	Tag    string `json:"tag,omitempty"`
	// Reports makes a watch deliver every report of a matching instance too.
	Reports bool `json:"-"`
}

// Event is one transition of an instance, as delivered by Watch.
type Event struct {
	Seq uint64 `json:"seq"`
	At  uint64 `json:"at"`
	// Kind is "joined", "online", "offline", "left", "evicted", "health-changed", "report"...
	Kind     string          `json:"kind"`
	ID       string          `json:"id"`
	Group    string          `json:"group"`
	Service  string          `json:"service"`
	Instance *Instance       `json:"instance"`
	Detail   json.RawMessage `json:"detail"`
}

// Command is a command from the registry; "shutdown" asks the service to stop.
type Command struct {
	ID       uint64          `json:"command_id"`
	Name     string          `json:"name"`
	Reason   *string         `json:"reason"`
	Payload  json.RawMessage `json:"payload"`
	IssuedBy *string         `json:"issued_by"`
}

// LookupResult is the answer to a lookup; Stale is true when the registry is unreachable and
// the answer comes from the last known state.
type LookupResult struct {
	Instances []Instance
	Stale     bool
}

// LookupOption narrows a lookup.
type LookupOption func(*lookupOptions)

type lookupOptions struct {
	healthyOnly bool
	service     string
	tag         string
}

// HealthyOnly keeps only online instances whose health is passing.
func HealthyOnly() LookupOption { return func(o *lookupOptions) { o.healthyOnly = true } }

// WithService keeps only instances of one service.
func WithService(s string) LookupOption { return func(o *lookupOptions) { o.service = s } }

// WithTag keeps only instances that have a tag.
func WithTag(t string) LookupOption { return func(o *lookupOptions) { o.tag = t } }
