package sfc

import (
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
	IgnoreEnv bool
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

// Result answers a command: Err != nil reports a failure, otherwise Value (marshalled to
// JSON) is the result.
type Result struct {
	Value any
	Err   error
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
