package sfc

// Protocol error codes (PROTOCOL.md §11): the values of Error.RegistryCode, as the registry
// (or the client, for a registry that predates protocol v1) names them. The strings are the
// contract, the same in C (the "code" of an error event), Node.js (err.protocolCode) and Rust;
// a registry may add codes, so compare with these and treat others as their Code says.
const (
	CodeBadPreamble        = "bad-preamble"
	CodeUnsupportedVersion = "unsupported-version" // also a registry that predates protocol v1 (Config.Legacy off)
	CodeFrameTooLarge      = "frame-too-large"
	CodeEmptyFrame         = "empty-frame"
	CodeBadJSON            = "bad-json"
	CodeUnknownMessage     = "unknown-message"
	CodeInvalidMessage     = "invalid-message"
	CodeUnexpectedMessage  = "unexpected-message"
	CodeUnsupportedCodec   = "unsupported-codec"
	CodeHandshakeTimeout   = "handshake-timeout"
	CodeLivenessTimeout    = "liveness-timeout"
	CodeSuperseded         = "superseded"
	CodeInvalidField       = "invalid-field"
	CodeRateLimited        = "rate-limited"
	CodeTooManyConnections = "too-many-connections"
	CodeNotAuthorized      = "not-authorized"
	CodeUnknownInstance    = "unknown-instance"
	CodeNotOnline          = "not-online"
	CodeUnknownWatch       = "unknown-watch"
	CodeCommandTimeout     = "command-timeout"
	CodeLagged             = "lagged"
	CodeShuttingDown       = "shutting-down"
	CodeInternal           = "internal"
	CodeUnknownCommand     = "unknown-command"
	// CodeSlowConsumer: the client read too slowly; its outbound queue at the registry went
	// over --max-outbound bytes, so the registry dropped the queue and closed the session
	// (the client reconnects by itself).
	CodeSlowConsumer = "slow-consumer"
	// CodeTooManyInstances: registering this new identity would pass the registry's cap on
	// instances (--max-instances, the per-group cap, or the caps on legacy records); the
	// message names the cap. The client keeps retrying.
	CodeTooManyInstances = "too-many-instances"
)
